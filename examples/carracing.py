"""Evolve the paper's factorized CarRacing-v3 policy with two-stage selection.

    python examples/carracing.py --population 32 --generations 10

The paper: population 256; all members play 2 episodes, the best 32 play 4 more, the best
8 become parents; 40 generations; episodes end early once the last 21 rewards were all
negative (more than 20 seen).
"""

import argparse

import keras_lrne


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--variant", default="factorized",
                        help="factorized (low-rank), full or small")
    parser.add_argument("--population", type=int, default=8, help="population size")
    parser.add_argument("--parents", type=int, default=2,
                        help="truncation size, survivors per generation")
    parser.add_argument("--reevaluate-top", type=int, default=4,
                        help="two-stage selection: re-evaluate the best N")
    parser.add_argument("--episodes", type=int, default=2,
                        help="episodes per member per generation")
    parser.add_argument("--reevaluate-episodes", type=int, default=4,
                        help="episodes of the second stage")
    parser.add_argument("--generations", type=int, default=3, help="generations")
    parser.add_argument("--max-episode-steps", type=int, default=1000, help="step cap per episode")
    parser.add_argument("--verbose", type=int, default=1,
                        help="0 silent, 1 progress bar, 2 one line per generation")
    args = parser.parse_args(argv)

    task = keras_lrne.tasks.CarRacing(episodes=args.episodes,
                                      max_episode_steps=args.max_episode_steps,
                                      reevaluate_top=args.reevaluate_top,
                                      reevaluate_episodes=args.reevaluate_episodes)
    model = keras_lrne.presets.carracing_policy(args.variant)
    strategy = keras_lrne.strategies.GA(args.population, args.parents)
    history = model.evolve(task, strategy=strategy, generations=args.generations, seed=0,
                           verbose=args.verbose)
    print(f"elite return per generation: {history.history['episode_return']}")
    print(f"env steps saved by early termination: {history.history['early_termination_saved']}")
    return history


if __name__ == "__main__":
    main()

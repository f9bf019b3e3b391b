"""Evolve the paper's factorized CarRacing-v3 policy with two-stage selection.

    python examples/carracing.py --population 32 --generations 10

The paper: population 256; all members play 2 episodes, the best 32 play 4 more, the best
8 become parents; 40 generations; episodes end early once the last 21 rewards were all
negative (more than 20 seen).
"""

import argparse

import keras_lrne


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="factorized")
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--parents", type=int, default=2)
    parser.add_argument("--reevaluate-top", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--reevaluate-episodes", type=int, default=4)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--max-episode-steps", type=int, default=1000)
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)

    task = keras_lrne.tasks.CarRacing(episodes=args.episodes,
                                      max_episode_steps=args.max_episode_steps)
    model = keras_lrne.presets.carracing_policy(args.variant)
    strategy = keras_lrne.strategies.GA(
        args.population, args.parents, reevaluate_top=args.reevaluate_top,
        reevaluate_episodes=args.reevaluate_episodes,
    )
    history = model.evolve(task, strategy=strategy, generations=args.generations, seed=0,
                           verbose=args.verbose)
    print(f"elite return per generation: {history.history['episode_return']}")
    print(f"env steps saved by early termination: {history.history['early_termination_saved']}")
    return history


if __name__ == "__main__":
    main()

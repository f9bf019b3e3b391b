"""Evolve a factorized MLP policy on a MuJoCo task (HalfCheetah-v5 by default).

    python examples/control.py --env Hopper-v5 --population 64 --generations 50
"""

import argparse

import keras_lrne


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5", help="gymnasium environment id")
    parser.add_argument("--variant", default="factorized",
                        help="factorized (low-rank), full or small")
    parser.add_argument("--population", type=int, default=32, help="population size")
    parser.add_argument("--parents", type=int, default=4,
                        help="truncation size, survivors per generation")
    parser.add_argument("--generations", type=int, default=10, help="generations")
    parser.add_argument("--max-episode-steps", type=int, default=1000, help="step cap per episode")
    parser.add_argument("--verbose", type=int, default=1,
                        help="0 silent, 1 progress bar, 2 one line per generation")
    args = parser.parse_args(argv)

    task = keras_lrne.tasks.Control(args.env, max_episode_steps=args.max_episode_steps)
    model = keras_lrne.presets.control_policy(args.variant, input_dim=task.input_shape[0],
                                              num_actions=task.num_outputs)
    history = model.evolve(task,
                           strategy=keras_lrne.strategies.GA(args.population, args.parents,
                                                             mutation_rate=0.05),
                           generations=args.generations, seed=0, verbose=args.verbose)
    print(f"elite return per generation: {history.history['episode_return']}")
    return history


if __name__ == "__main__":
    main()

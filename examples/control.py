"""Evolve a factorized MLP policy on a MuJoCo task (HalfCheetah-v5 by default).

    python examples/control.py --env Hopper-v5 --population 64 --generations 50
"""

import argparse

import keras_lrne


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--variant", default="factorized")
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--parents", type=int, default=4)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--max-episode-steps", type=int, default=1000)
    parser.add_argument("--verbose", type=int, default=1)
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

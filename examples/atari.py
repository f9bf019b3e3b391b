"""Evolve the paper's factorized Atari policy (Nature-DQN, rank 4) on an ALE game.

    python examples/atari.py --game Frostbite --population 64 --generations 20

The paper: population 512, 16 parents, 300 generations, one episode of at most 2,500
steps per member (`keras-lrne atari --game Frostbite --population 512 --parents 16
--generations 300`).
"""

import argparse

import keras

import keras_lrne


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--game", default="Frostbite", help="Atari game name")
    parser.add_argument("--variant", default="factorized",
                        help="factorized (low-rank), full or small")
    parser.add_argument("--population", type=int, default=16, help="population size")
    parser.add_argument("--parents", type=int, default=4,
                        help="truncation size, survivors per generation")
    parser.add_argument("--generations", type=int, default=5, help="generations")
    parser.add_argument("--max-episode-steps", type=int, default=500, help="step cap per episode")
    parser.add_argument("--verbose", type=int, default=1,
                        help="0 silent, 1 progress bar, 2 one line per generation")
    args = parser.parse_args(argv)

    task = keras_lrne.tasks.Atari(args.game, max_episode_steps=args.max_episode_steps)
    model = keras_lrne.presets.atari_policy(args.variant, num_actions=task.num_outputs)
    history = model.evolve(
        task,
        strategy=keras_lrne.strategies.GA(args.population, args.parents),
        generations=args.generations,
        callbacks=[keras.callbacks.EarlyStopping(monitor="episode_return", mode="max",
                                                 patience=20)],
        seed=0,
        verbose=args.verbose,
    )
    print(f"elite return per generation: {history.history['episode_return']}")
    return history


if __name__ == "__main__":
    main()

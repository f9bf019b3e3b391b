"""Tune rank, mutation rate, population size and parents of an evolved language model.

Uses keras-tuner's own tuners through `keras_lrne.EvolutionHyperModel` (needs
`pip install "keras-lrne[tuner]"`): each trial builds a small factorized transformer,
evolves it on the embedded offline corpus and is scored by its elite's `val_loss`.

    python examples/tune.py                                   # RandomSearch, 4 trials
    python examples/tune.py --tuner bayesian --max-trials 8
    python examples/tune.py --tuner hyperband --generations 9  # generations = epochs
"""

import argparse

import keras
import keras_tuner

import keras_lrne

TUNERS = ("random", "bayesian", "hyperband")


def make_tuner(kind, hypermodel, max_trials, generations, directory, project_name, seed):
    objective = keras_tuner.Objective("val_loss", direction="min")
    common = dict(objective=objective, directory=directory, project_name=project_name,
                  overwrite=True, seed=seed)
    if kind == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if kind == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=max_trials, **common)
    # Hyperband: generations play the role of epochs; `max_trials` does not apply.
    return keras_tuner.Hyperband(hypermodel, max_epochs=generations, factor=3, **common)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tuner", choices=TUNERS, default="random",
                        help="keras-tuner search algorithm")
    parser.add_argument("--max-trials", type=int, default=4, help="keras-tuner trials")
    parser.add_argument("--generations", type=int, default=5,
                        help="generations per trial (Hyperband: the most per trial)")
    parser.add_argument("--directory", default="tuning", help="keras-tuner results directory")
    parser.add_argument("--project-name", default="language_model", help="keras-tuner project name")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4],
                        help="factor ranks to search")
    parser.add_argument("--populations", type=int, nargs="+", default=[8, 16],
                        help="population sizes to search")
    parser.add_argument("--parents", type=int, nargs="+", default=[2, 4],
                        help="numbers of parents to search")
    parser.add_argument("--mutation-rate", type=float, nargs=2, default=[1e-3, 1e-1],
                        metavar=("MIN", "MAX"),
                        help="log-uniform range of mutation rates to search")
    parser.add_argument("--sequence-length", type=int, default=32, help="tokens per sequence")
    parser.add_argument("--num-sequences", type=int, default=32,
                        help="sequences every member is evaluated on")
    parser.add_argument("--vocab-size", type=int, default=512,
                        help="vocabulary size of the tokenizer")
    parser.add_argument("--seed", type=int, default=0, help="run seed")
    parser.add_argument("--verbose", type=int, default=1,
                        help="0 silent, 1 progress bar, 2 one line per generation")
    args = parser.parse_args(argv)

    task = keras_lrne.tasks.LanguageModeling(
        sequence_length=args.sequence_length,
        num_sequences=args.num_sequences,
        vocab_size=args.vocab_size,
    )

    def build_model(hp, rank):
        model = keras_lrne.presets.language_model(
            "factorized", vocab_size=task.vocab_size, sequence_length=args.sequence_length,
            hidden_dim=16, num_layers=1, num_heads=2, key_dim=4, ff_dim=32, rank=rank,
            embed_rank=8,
        )
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    hypermodel = keras_lrne.EvolutionHyperModel(
        build_model,
        rank=args.ranks,
        mutation_rate=tuple(args.mutation_rate),
        population_size=args.populations,
        num_parents=args.parents,
    )
    tuner = make_tuner(args.tuner, hypermodel, args.max_trials, args.generations,
                       args.directory, args.project_name, args.seed)
    tuner.search(task, generations=args.generations, seed=args.seed, verbose=args.verbose)
    best = tuner.get_best_hyperparameters()[0]
    best_trial = tuner.oracle.get_best_trials(1)[0]
    print(f"best val_loss {best_trial.score:.3f} with "
          + ", ".join(f"{name}={best.get(name)}" for name in
                      ("rank", "mutation_rate", "population_size", "num_parents")))
    return tuner


if __name__ == "__main__":
    main()

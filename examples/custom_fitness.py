"""Evolve a plain Keras model on a fitness of your own: accuracy, which has no gradient.

A `keras.Sequential` classifier (no keras-lrne layers, no `EvolveMixin`) is evolved by
`keras_lrne.evolve` on `keras_lrne.tasks.Fitness`, first in its compiled form (accuracy
in `keras.ops`, scored for the whole population in vectorised calls), then in its Python
form (any code, called once per member; here an "external" scorer that only sees
predictions), optionally in Ray workers (`--workers N`).

    python examples/custom_fitness.py
"""

import argparse

import keras
import numpy as np

import keras_lrne
from keras_lrne.tasks import Fitness


def blobs(n=240, seed=0):
    """Three Gaussian blobs in 2-D, labels 0..2."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 1.0], [-0.9, -0.5], [0.9, -0.5]])
    y = rng.integers(0, 3, n)
    x = centres[y] + rng.normal(0, 0.45, (n, 2))
    return x.astype("float32"), y.astype("int32")


def build_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(3)])


def accuracy(logits, labels):
    """Compiled fitness: traced inside the population call, so keras.ops only.

    A sample is correct when its label's logit is the largest. This equals the accuracy
    of `argmax(logits) == labels` (up to exact ties), without `argmax`, which makes
    TensorFlow's vectorising map log "Using a while_loop for converting Bitcast".
    """
    true_logit = keras.ops.take_along_axis(logits, labels[:, None], axis=-1)
    correct = keras.ops.all(logits <= true_logit, axis=-1)
    return keras.ops.mean(keras.ops.cast(correct, "float32"))


def external_score(predicted_labels, true_labels):
    """Stands for code outside Keras (a simulator, a subprocess, a web service)."""
    return float(np.mean(predicted_labels == true_labels))


def held_out_accuracy(model):
    """Python fitness: plain Python, called once per member with its weights loaded."""
    x, y = blobs(120, seed=1)
    return external_score(np.argmax(model.predict(x, verbose=0), axis=-1), y)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--generations", type=int, default=30, help="generations per form")
    parser.add_argument("--population", type=int, default=64, help="population size")
    parser.add_argument("--parents", type=int, default=8,
                        help="truncation size, survivors per generation")
    parser.add_argument("--python-generations", type=int, default=3,
                        help="generations of the Python-form run (one call per member)")
    parser.add_argument("--workers", type=int, default=0,
                        help="evaluate the Python form in this many Ray workers (0: here)")
    parser.add_argument("--verbose", type=int, default=2,
                        help="0 silent, 1 progress bar, 2 one line per generation")
    args = parser.parse_args(argv)

    x, y = blobs()
    model = build_model()
    strategy = keras_lrne.strategies.GA(population_size=args.population,
                                        num_parents=args.parents, mutation_rate=0.05)
    compiled = keras_lrne.evolve(model, Fitness(accuracy, data=(x, y)), strategy=strategy,
                                 generations=args.generations, seed=0, verbose=args.verbose)
    logs = compiled.history
    print(f"compiled accuracy: {logs['fitness'][0]:.3f} -> {logs['fitness'][-1]:.3f}")

    distribution = None
    if args.workers:
        distribution = keras_lrne.distribution.RayWorkers(num_workers=args.workers)
    # A new run: the GA draws its first population from the layers' initializers.
    model = build_model(seed=1)
    python = keras_lrne.evolve(model, Fitness(held_out_accuracy, per_member=True),
                               strategy=strategy, generations=args.python_generations,
                               seed=1, verbose=args.verbose, distribution=distribution)
    logs = python.history
    print(f"held-out accuracy (Python fitness): {logs['fitness'][0]:.3f} -> "
          f"{logs['fitness'][-1]:.3f}, failed members {int(sum(logs['failed_members']))}")
    return compiled, python


if __name__ == "__main__":
    main()

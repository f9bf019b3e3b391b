"""Evolve your own Keras model: a subclassed model with `EvolveMixin` on a toy task.

Any Keras model whose forward pass works in `model.stateless_call` can be evolved;
factorized layers make its genome smaller. Here: classify 2-D points on two spirals.

    python examples/custom_model.py
"""

import argparse

import keras
import numpy as np

import keras_lrne
from keras_lrne import layers as lrl


class SpiralClassifier(keras_lrne.EvolveMixin, keras.Model):
    def __init__(self, width=64, rank=4, **kwargs):
        super().__init__(**kwargs)
        self.hidden1 = keras.layers.Dense(width, activation="relu")
        self.hidden2 = lrl.FactorizedDense(width, rank=rank, activation="relu")
        self.head = keras.layers.Dense(2)

    def call(self, inputs):
        return self.head(self.hidden2(self.hidden1(inputs)))


def spirals(n=256, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
    label = rng.integers(0, 2, n)
    sign = np.where(label == 0, 1.0, -1.0)
    x = np.stack([sign * t * np.cos(t), sign * t * np.sin(t)], axis=1) / (3 * np.pi)
    return (x + rng.normal(0, 0.02, x.shape)).astype("float32"), label.astype("int32")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--generations", type=int, default=50, help="generations")
    parser.add_argument("--population", type=int, default=64, help="population size")
    parser.add_argument("--parents", type=int, default=8,
                        help="truncation size, survivors per generation")
    parser.add_argument("--verbose", type=int, default=2,
                        help="0 silent, 1 progress bar, 2 one line per generation")
    args = parser.parse_args(argv)

    x, y = spirals()
    model = SpiralClassifier()
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.evolve(
        x, y,
        validation_data=spirals(128, seed=1),
        strategy=keras_lrne.strategies.GA(population_size=args.population, num_parents=args.parents,
                                          mutation_rate=0.05),
        generations=args.generations,
        seed=0,
        verbose=args.verbose,
    )
    # The model holds the elite: use it like any Keras model.
    loss, accuracy = model.evaluate(x, y, verbose=0)
    print(f"elite: loss {loss:.3f}, accuracy {accuracy:.3f}")
    return history


if __name__ == "__main__":
    main()

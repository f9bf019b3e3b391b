"""`keras_lrne.Sequential`: a `keras.Sequential` that can `evolve()`."""

import keras

from keras_lrne.models.evolve_mixin import EvolveMixin


@keras.saving.register_keras_serializable(package="keras_lrne")
class Sequential(EvolveMixin, keras.Sequential):
    """A `keras.Sequential` with `evolve()` (see `EvolveMixin.evolve`).

    Example:

    >>> model = keras_lrne.Sequential([
    ...     keras.Input((16,)),
    ...     keras_lrne.layers.FactorizedDense(32, rank=2, activation="relu"),
    ...     keras.layers.Dense(1),
    ... ])
    >>> model.compile(loss="mse")
    >>> history = model.evolve(x, y, strategy=keras_lrne.strategies.GA(16, 4), generations=5)
    """

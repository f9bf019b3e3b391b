"""`keras_lrne.Model`: a `keras.Model` that can `evolve()`."""

import keras

from keras_lrne.models.evolve_mixin import EvolveMixin


@keras.saving.register_keras_serializable(package="keras_lrne")
class Model(EvolveMixin, keras.Model):
    """A `keras.Model` with `evolve()` (see `EvolveMixin.evolve`).

    Works with the functional API (`keras_lrne.Model(inputs, outputs)`) and as a base class
    for subclassed models, exactly like `keras.Model`.

    Example:

    >>> inputs = keras.Input((16,))
    >>> outputs = keras_lrne.layers.FactorizedDense(4, rank=2)(inputs)
    >>> model = keras_lrne.Model(inputs, outputs)
    >>> model.compile(loss="mse")
    >>> history = model.evolve(x, y, strategy=keras_lrne.strategies.GA(16, 4), generations=5)
    """

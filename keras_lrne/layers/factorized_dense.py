"""`FactorizedDense`: a densely-connected layer whose kernel is `U @ V`."""

import keras
from keras import ops

from keras_lrne._validation import check_int
from keras_lrne.layers import _factors, _init, _low_rank


@keras.saving.register_keras_serializable(package="keras_lrne")
class FactorizedDense(_factors.FactorPairMixin, keras.layers.Layer):
    """Densely-connected layer whose kernel is a low-rank product `U @ V`.

    Computes `activation((inputs @ kernel_u) @ kernel_v + bias)` on the last axis
    of the input. The full `(fan_in, units)` kernel is never formed in `call`;
    the layer stores only the factors, which is the indirect encoding that a
    genetic algorithm mutates.

    Reference: Garbus & Pollack, "Low Rank Factorizations are Indirect Encodings
    for Deep Neuroevolution" (arXiv 2504.03037, 2025).

    With `"auto"` initialisers the factors are drawn from zero-mean normals
    chosen so that the product is Kaiming-initialised (docs/design.md):

    - `fan_in <= units`: Var(U) = sqrt(2)/fan_in, Var(V) = sqrt(2)/rank, so
      Var(U @ V) = rank * Var(U) * Var(V) = 2/fan_in.
    - `fan_in > units`: Var(U) = 2/fan_in, Var(V) = 2/rank (Var(U @ V) =
      4/fan_in, as in the authors' code).

    A `UserWarning` is emitted at build time when `rank >= min(fan_in, units)`,
    since the factors then have at least as many parameters as the full kernel.

    Args:
        units: Positive integer, dimensionality of the output space.
        rank: Positive integer, inner dimension of the factorization.
        activation: Activation function. `None` means linear.
        use_bias: Boolean, whether the layer uses a (never factorized) bias.
        kernel_u_initializer: `"auto"` or an initializer for `kernel_u`
            `(fan_in, rank)`.
        kernel_v_initializer: `"auto"` or an initializer for `kernel_v`
            `(rank, units)`.
        bias_initializer: Initializer for the bias vector.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: Tensor of shape `(..., fan_in)`.

    Returns:
        Tensor of shape `(..., units)`.

    Example:

    >>> layer = FactorizedDense(8, rank=2)
    >>> y = layer(keras.ops.ones((3, 16)))
    >>> [w.name for w in layer.trainable_weights]
    ['kernel_u', 'kernel_v', 'bias']
    """

    def __init__(
        self,
        units,
        rank,
        activation=None,
        use_bias=True,
        kernel_u_initializer="auto",
        kernel_v_initializer="auto",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = check_int("units", units)
        self.rank = check_int("rank", rank)
        _factors.set_factor_arguments(self, activation, use_bias, kernel_u_initializer,
                                      kernel_v_initializer, bias_initializer)
        self.input_spec = keras.layers.InputSpec(min_ndim=1)

    def build(self, input_shape):
        fan_in = input_shape[-1]
        if fan_in is None:
            raise ValueError(
                "The last dimension of the inputs to `FactorizedDense` should be "
                f"defined. Received: input_shape={input_shape}"
            )
        fan_in = int(fan_in)
        _init.warn_if_not_factorized(self.name, self.rank, fan_in, self.units)
        std_u, std_v = _init.dense_factor_stds(fan_in, self.units, self.rank)
        _factors.add_factor_weights(self, fan_in, self.units, std_u, std_v)
        self.input_spec = keras.layers.InputSpec(min_ndim=1, axes={-1: fan_in})

    @property
    def kernel(self):
        """The full kernel `kernel_u @ kernel_v` (read-only, for inspection)."""
        if not self.built:
            raise AttributeError("You must build the layer before accessing `kernel`.")
        return ops.matmul(self.kernel_u, self.kernel_v)

    #: Factors whose member perturbations `call` adds unmaterialised.
    _lrne_unmaterialized = ("kernel_u", "kernel_v")

    def call(self, inputs):
        # `_low_rank.matmul` adds a population member's low-rank perturbation of a
        # factor (OpenES perturbation_rank) without materialising it; else a plain matmul.
        x = _low_rank.matmul(_low_rank.matmul(inputs, self.kernel_u), self.kernel_v)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "rank": self.rank,
                **_factors.factor_config(self),
            }
        )
        return config

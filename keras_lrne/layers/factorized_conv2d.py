"""`FactorizedConv2D`: a 2D convolution whose kernel is `reshape(U @ V) / 2`."""

import math

import keras
from keras import ops

from keras_lrne._validation import check_int, check_int_pair
from keras_lrne.layers import _factors, _init, _vectorized

_PATHS = ("auto", "materialize", "two_step")


def _conv_output_length(length, kernel, stride, padding):
    if length is None:
        return None
    if padding == "same":
        return -(-int(length) // stride)
    return max(0, (int(length) - kernel) // stride + 1)


@keras.saving.register_keras_serializable(package="keras_lrne")
class FactorizedConv2D(_factors.FactorPairMixin, keras.layers.Layer):
    """2D convolution (channels_last) whose kernel is a halved low-rank product.

    The `(kh, kw, in, filters)` kernel is treated as a `(kh * kw * in, filters)`
    matrix and stored only as two factors, `kernel_u (kh * kw * in, rank)` and
    `kernel_v (rank, filters)`:

    `kernel = reshape(kernel_u @ kernel_v, (kh, kw, in, filters)) / 2`

    and the layer computes `activation(conv(inputs, kernel) + bias)`. `call` uses
    whichever of two mathematically identical forms needs fewer multiply-adds for
    the static input shape: materialising the kernel and running one convolution
    (`kh*kw*in*rank*filters` once, plus `kh*kw*in*filters` per output position), or
    convolving with `kernel_u` reshaped to `(kh, kw, in, rank)` and projecting the
    `rank` channels with `kernel_v / 2` (`kh*kw*in*rank + rank*filters` per output
    position). With an unknown batch size one example is assumed.

    When `model.evolve()` evaluates a population (one vectorised call over members,
    each with its own factors), the convolution is computed as one matrix product of
    space-to-depth blocks followed by shifted sums, which vectorises over members;
    outside evolution `keras.ops.conv` is used.

    Reference: Garbus & Pollack, "Low Rank Factorizations are Indirect Encodings
    for Deep Neuroevolution" (arXiv 2504.03037, 2025); the `/ 2` and the
    initialisation follow the authors' code.

    With `"auto"` initialisers the factors are drawn from zero-mean normals with
    Var(U) = 2/fan_in (`fan_in = kh * kw * in`) and Var(V) = 2/rank, so
    Var(U @ V) = 4/fan_in and, after halving, Var(kernel) = 1/fan_in.

    A `UserWarning` is emitted at build time when `rank >= min(fan_in, filters)`,
    since the factors then have at least as many parameters as the full kernel.

    Args:
        filters: Positive integer, number of output channels.
        kernel_size: Positive integer or tuple of 2 positive integers, the height
            and width of the convolution window.
        rank: Positive integer, inner dimension of the factorization.
        strides: Positive integer or tuple of 2 positive integers, the strides of
            the convolution along height and width.
        padding: `"valid"` (no padding) or `"same"` (zero padding so that the
            output has `ceil(input / strides)` rows and columns).
        activation: Activation function. `None` means linear.
        use_bias: Boolean, whether the layer uses a (never factorized) bias.
        kernel_u_initializer: `"auto"` or an initializer for `kernel_u`
            `(kh * kw * in, rank)`.
        kernel_v_initializer: `"auto"` or an initializer for `kernel_v`
            `(rank, filters)`.
        bias_initializer: Initializer for the bias vector.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: 4D tensor of shape `(batch, height, width, in)`.

    Returns:
        4D tensor of shape `(batch, new_height, new_width, filters)`.

    Example:

    >>> layer = FactorizedConv2D(16, 3, rank=2, strides=2, padding="same")
    >>> y = layer(keras.ops.ones((1, 8, 8, 4)))
    >>> tuple(y.shape)
    (1, 4, 4, 16)
    >>> [(w.name, tuple(w.shape)) for w in layer.trainable_weights]
    [('kernel_u', (36, 2)), ('kernel_v', (2, 16)), ('bias', (16,))]
    """

    def __init__(
        self,
        filters,
        kernel_size,
        rank,
        strides=1,
        padding="valid",
        activation=None,
        use_bias=True,
        kernel_u_initializer="auto",
        kernel_v_initializer="auto",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_int("filters", filters)
        self.kernel_size = check_int_pair("kernel_size", kernel_size)
        self.rank = check_int("rank", rank)
        self.strides = check_int_pair("strides", strides)
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ValueError(
                "Received an invalid value for `padding`, expected 'valid' or 'same'. "
                f"Received: padding={padding!r}"
            )
        self.padding = padding.lower()
        _factors.set_factor_arguments(self, activation, use_bias, kernel_u_initializer,
                                      kernel_v_initializer, bias_initializer)
        # Which form `call` uses: "auto" (fewer multiply-adds), "materialize" or
        # "two_step". Private; tests force a path through it.
        self._compute_path = "auto"
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(
                "The last (channel) dimension of the inputs to `FactorizedConv2D` should "
                f"be defined. Received: input_shape={input_shape}"
            )
        in_channels = int(in_channels)
        kh, kw = self.kernel_size
        fan_in = kh * kw * in_channels
        _init.warn_if_not_factorized(self.name, self.rank, fan_in, self.filters)
        _factors.add_factor_weights(self, fan_in, self.filters, math.sqrt(2.0 / fan_in),
                                    math.sqrt(2.0 / self.rank))
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: in_channels})

    def _full_kernel(self, kernel_u, kernel_v):
        kh, kw = self.kernel_size
        in_channels = kernel_u.shape[0] // (kh * kw)
        product = ops.matmul(kernel_u, ops.multiply(kernel_v, 0.5))
        return ops.reshape(product, (kh, kw, in_channels, self.filters))

    @property
    def kernel(self):
        """The full kernel `reshape(kernel_u @ kernel_v) / 2` (read-only)."""
        if not self.built:
            raise AttributeError("You must build the layer before accessing `kernel`.")
        return self._full_kernel(self.kernel_u, self.kernel_v)

    def _multiply_adds(self, input_shape):
        """Multiply-adds `(materialize, two_step)` of one call on `input_shape`."""
        kh, kw = self.kernel_size
        fan_in = kh * kw * int(input_shape[-1])
        out = self.compute_output_shape(input_shape)
        positions = 1
        for dim in (out[0], out[1], out[2]):
            positions *= 1 if dim is None else int(dim)
        materialize = fan_in * self.rank * self.filters + positions * fan_in * self.filters
        two_step = positions * (fan_in * self.rank + self.rank * self.filters)
        return materialize, two_step

    def _use_two_step(self, input_shape):
        if self._compute_path != "auto":
            if self._compute_path not in _PATHS:
                raise ValueError(
                    f"Invalid `_compute_path`, expected one of {_PATHS}. "
                    f"Received: _compute_path={self._compute_path!r}"
                )
            return self._compute_path == "two_step"
        materialize, two_step = self._multiply_adds(input_shape)
        return two_step < materialize

    def call(self, inputs):
        kh, kw = self.kernel_size
        in_channels = self.kernel_u.shape[0] // (kh * kw)
        # Only static integer dimensions count: symbolic ones (JAX export) and None mean
        # "unknown", for which one example is assumed.
        shape = tuple(d if isinstance(d, int) else None for d in inputs.shape)
        two_step = self._use_two_step(shape)
        if two_step:
            kernel = ops.reshape(self.kernel_u, (kh, kw, in_channels, self.rank))
        else:
            kernel = self._full_kernel(self.kernel_u, self.kernel_v)
        if _vectorized.in_member_calls():
            # Traced per member inside the population's vectorised map: a form that
            # vectorises over members (see `keras_lrne/layers/_vectorized.py`).
            x = _vectorized.conv2d_by_matmul(inputs, kernel, self.strides, self.padding)
        else:
            x = ops.conv(
                inputs,
                kernel,
                strides=self.strides,
                padding=self.padding,
                data_format="channels_last",
            )
        if two_step:
            x = ops.matmul(x, ops.multiply(self.kernel_v, 0.5))
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        height, width = (
            _conv_output_length(input_shape[i + 1], self.kernel_size[i], self.strides[i],
                                self.padding)
            for i in range(2)
        )  # fmt: skip
        return (input_shape[0], height, width, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "rank": self.rank,
                "strides": self.strides,
                "padding": self.padding,
                **_factors.factor_config(self),
            }
        )
        return config

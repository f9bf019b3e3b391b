"""`RotaryPosition`: rotary position encoding of the leading channels."""

import numbers

import keras
from keras import ops

from keras_lrne._validation import check_int


@keras.saving.register_keras_serializable(package="keras_lrne")
class RotaryPosition(keras.layers.Layer):
    """Applies rotary position encoding to the first `dims` channels.

    For a `(batch, seq, channels)` input, channel pairs `(2i, 2i + 1)` with
    `i < dims / 2` are rotated by the angle
    `position * max_wavelength ** (-2i / dims)`; channels `dims:` pass through
    unchanged. The layer has no weights. Position 0 is the identity and every
    rotation preserves the norm of each token vector.

    Reference: Garbus & Pollack, "Low Rank Factorizations are Indirect Encodings
    for Deep Neuroevolution" (arXiv 2504.03037, 2025): rotary position on the
    first 4 dims of the token embedding, applied once to the embedding output.

    Args:
        dims: Positive even integer, number of leading channels to rotate.
        max_wavelength: Positive number, the base wavelength.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: Float tensor of shape `(batch, seq, channels)` with
            `channels >= dims`.

    Returns:
        Tensor of the same shape and dtype as `inputs`.

    Example:

    >>> layer = RotaryPosition(dims=4)
    >>> layer(keras.ops.ones((2, 6, 8))).shape
    (2, 6, 8)
    """

    def __init__(self, dims=4, max_wavelength=10000, **kwargs):
        super().__init__(**kwargs)
        dims = check_int("dims", dims)
        if dims % 2:
            raise ValueError(
                "Received an invalid value for `dims`, expected a positive even "
                f"integer. Received: dims={dims}"
            )
        if (
            isinstance(max_wavelength, bool)
            or not isinstance(max_wavelength, numbers.Real)
            or not max_wavelength > 0
        ):
            raise ValueError(
                "Received an invalid value for `max_wavelength`, expected a positive "
                f"number. Received: max_wavelength={max_wavelength!r}"
            )
        self.dims = dims
        self.max_wavelength = max_wavelength
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is not None and channels < self.dims:
            raise ValueError(
                f"`dims` must not exceed the number of input channels. Received: "
                f"dims={self.dims}, input_shape={input_shape}"
            )

    def call(self, inputs):
        half = self.dims // 2
        seq_len = ops.shape(inputs)[1]
        positions = ops.cast(ops.arange(seq_len), "float32")
        exponents = ops.cast(ops.arange(half), "float32") * (-2.0 / self.dims)
        inv_freq = ops.power(float(self.max_wavelength), exponents)
        angles = ops.einsum("t,f->tf", positions, inv_freq)  # (T, dims / 2)
        cos = ops.cast(ops.cos(angles), inputs.dtype)
        sin = ops.cast(ops.sin(angles), inputs.dtype)
        even = ops.take(inputs, list(range(0, self.dims, 2)), axis=-1)
        odd = ops.take(inputs, list(range(1, self.dims, 2)), axis=-1)
        rot_even = even * cos - odd * sin
        rot_odd = even * sin + odd * cos
        rotated = ops.stack([rot_even, rot_odd], axis=-1)  # (B, T, dims / 2, 2)
        shape = ops.shape(inputs)
        rotated = ops.reshape(rotated, (shape[0], shape[1], self.dims))
        rest = inputs[..., self.dims :]
        return ops.concatenate([rotated, rest], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"dims": self.dims, "max_wavelength": self.max_wavelength})
        return config

"""`TransformerBlock`: the paper's post-norm causal decoder block."""

import math

import keras

from keras_lrne._validation import check_int
from keras_lrne.layers.factorized_attention import FactorizedAttention
from keras_lrne.layers.factorized_dense import FactorizedDense


def _he_normal():
    # N(0, 2 / fan_in), untruncated, as in the authors' code.
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


@keras.saving.register_keras_serializable(package="keras_lrne")
class TransformerBlock(keras.layers.Layer):
    """Post-norm causal decoder block, full or low-rank factorized.

    Computes
    `h = LayerNorm(x + Attention(x, x, use_causal_mask=True))` and
    `out = LayerNorm(h + FF2(relu(FF1(h))))`.

    With every rank `None` (the "full" direct-encoding baseline) the attention
    is a plain `keras.layers.MultiHeadAttention` and the feed-forward layers are
    plain `keras.layers.Dense`, all kernels drawn from N(0, 2/fan_in) (the Q/K/V
    kernels are re-drawn after building so that `fan_in` is the model width,
    not `width * num_heads` as Keras' fan computation for 3-D kernels gives)
    and zero biases. With ranks, the attention is a `FactorizedAttention`
    (Q, K, V at `qkv_rank`, output at `o_rank`) and the feed-forward layers are
    `FactorizedDense` at `ff_rank`; `rank` is the default of all three. Layer
    normalization (epsilon 1e-5) is never factorized.

    Reference: Garbus & Pollack, "Low Rank Factorizations are Indirect Encodings
    for Deep Neuroevolution" (arXiv 2504.03037, 2025).

    Args:
        num_heads: Positive integer, number of attention heads.
        key_dim: Positive integer, size of each attention head.
        ff_dim: Positive integer, width of the ReLU feed-forward layer.
        rank: Default rank of `qkv_rank`, `o_rank` and `ff_rank`; `None` keeps
            the corresponding parts unfactorized.
        qkv_rank: Rank of the query/key/value projections.
        o_rank: Rank of the attention output projection.
        ff_rank: Rank of both feed-forward matrices.
        layer_norm_epsilon: Epsilon of both layer normalizations.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: Float tensor of shape `(batch, seq, hidden)`.
        training: Python boolean; passed to the sublayers.

    Returns:
        Tensor of shape `(batch, seq, hidden)`.

    Example:

    >>> block = TransformerBlock(num_heads=4, key_dim=4, ff_dim=64, rank=2)
    >>> block(keras.ops.ones((2, 5, 16))).shape
    (2, 5, 16)
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        ff_dim,
        rank=None,
        qkv_rank=None,
        o_rank=None,
        ff_rank=None,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = check_int("num_heads", num_heads)
        self.key_dim = check_int("key_dim", key_dim)
        self.ff_dim = check_int("ff_dim", ff_dim)
        self.rank = check_int("rank", rank, allow_none=True)
        self.qkv_rank = check_int("qkv_rank", qkv_rank, allow_none=True)
        self.o_rank = check_int("o_rank", o_rank, allow_none=True)
        self.ff_rank = check_int("ff_rank", ff_rank, allow_none=True)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        qkv = self.qkv_rank or self.rank
        out = self.o_rank or self.rank
        if (qkv is None) != (out is None):
            raise ValueError(
                "`qkv_rank` and `o_rank` must both be set (directly or through "
                "`rank`) or both be None. Received: "
                f"rank={rank}, qkv_rank={qkv_rank}, o_rank={o_rank}"
            )
        self._qkv = qkv
        self._o = out
        self._ff = self.ff_rank or self.rank

    def build(self, input_shape):
        hidden = input_shape[-1]
        if hidden is None:
            raise ValueError(
                "The last dimension of the inputs to `TransformerBlock` should be "
                f"defined. Received: input_shape={input_shape}"
            )
        hidden = int(hidden)
        dtype = self.dtype_policy
        if self._qkv is None:
            self.attention = keras.layers.MultiHeadAttention(
                self.num_heads,
                self.key_dim,
                kernel_initializer=_he_normal(),
                dtype=dtype,
                name="attention",
            )
        else:
            self.attention = FactorizedAttention(
                self.num_heads,
                self.key_dim,
                rank=self._qkv,
                output_rank=self._o,
                dtype=dtype,
                name="attention",
            )
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=dtype, name="attention_norm"
        )
        if self._ff is None:
            self.feedforward_intermediate = keras.layers.Dense(
                self.ff_dim,
                activation="relu",
                kernel_initializer=_he_normal(),
                dtype=dtype,
                name="feedforward_intermediate",
            )
            self.feedforward_output = keras.layers.Dense(
                hidden, kernel_initializer=_he_normal(), dtype=dtype, name="feedforward_output"
            )
        else:
            self.feedforward_intermediate = FactorizedDense(
                self.ff_dim,
                self._ff,
                activation="relu",
                dtype=dtype,
                name="feedforward_intermediate",
            )
            self.feedforward_output = FactorizedDense(
                hidden, self._ff, dtype=dtype, name="feedforward_output"
            )
        self.feedforward_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=dtype, name="feedforward_norm"
        )
        shape = tuple(input_shape)
        self.attention.build(shape, shape)
        if self._qkv is None:
            # Keras counts fan_in of a (hidden, heads, key_dim) kernel as
            # hidden * heads; re-draw Q/K/V from N(0, 2 / hidden).
            std = math.sqrt(2.0 / hidden)
            for dense in (
                self.attention.query_dense,
                self.attention.key_dense,
                self.attention.value_dense,
            ):
                init = keras.initializers.RandomNormal(stddev=std)
                # Keep the attribute in step so population initialisation and mutation
                # scales (which read `kernel_initializer`) use the same distribution.
                dense.kernel_initializer = init
                dense.kernel.assign(init(dense.kernel.shape, dtype=dense.kernel.dtype))
        self.attention_norm.build(shape)
        self.feedforward_intermediate.build(shape)
        self.feedforward_output.build(shape[:-1] + (self.ff_dim,))
        self.feedforward_norm.build(shape)

    def call(self, inputs, training=None):
        attended = self.attention(inputs, inputs, use_causal_mask=True, training=training)
        h = self.attention_norm(inputs + attended)
        ff = self.feedforward_output(self.feedforward_intermediate(h))
        return self.feedforward_norm(h + ff)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "ff_dim": self.ff_dim,
                "rank": self.rank,
                "qkv_rank": self.qkv_rank,
                "o_rank": self.o_rank,
                "ff_rank": self.ff_rank,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config

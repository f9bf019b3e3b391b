"""`FactorizedAttention`: multi-head attention with low-rank projections."""

import math

import keras
from keras import ops

from keras_lrne._validation import check_int
from keras_lrne.layers import _init
from keras_lrne.layers.factorized_dense import FactorizedDense


@keras.saving.register_keras_serializable(package="keras_lrne")
class FactorizedAttention(keras.layers.Layer):
    """Multi-head attention whose Q, K, V and output projections are `U @ V`.

    Shaped like `keras.layers.MultiHeadAttention` (scaled dot-product softmax
    attention with scale `1 / sqrt(key_dim)`), but the four projections are
    `FactorizedDense` sublayers named `"query"`, `"key"`, `"value"` and
    `"attention_output"`. Each projection stores `kernel_u`, `kernel_v` and
    (with `use_bias`) an unfactorized bias. Inputs are 3-D: `(batch, seq, dim)`.

    Reference: Garbus & Pollack, "Low Rank Factorizations are Indirect Encodings
    for Deep Neuroevolution" (arXiv 2504.03037, 2025): Q, K, V use rank
    `qkv_rank` and the output projection uses `o_rank`.

    Args:
        num_heads: Positive integer, number of attention heads.
        key_dim: Positive integer, size of each head for query and key.
        rank: Positive integer, default rank of all four projections.
        value_dim: Size of each head for value; defaults to `key_dim`.
        query_rank: Rank of the query projection; defaults to `rank`.
        key_rank: Rank of the key projection; defaults to `rank`.
        value_rank: Rank of the value projection; defaults to `rank`.
        output_rank: Rank of the output projection; defaults to `rank`.
        use_bias: Boolean, whether the projections use biases.
        output_shape: Last dimension of the output; defaults to the query's
            last dimension.
        kernel_u_initializer: `"auto"` or initializer of every `kernel_u`.
        kernel_v_initializer: `"auto"` or initializer of every `kernel_v`.
        bias_initializer: Initializer of the projection biases.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        query: Query tensor of shape `(B, T, dim)`.
        value: Value tensor of shape `(B, S, dim)`.
        key: Optional key tensor of shape `(B, S, dim)`; defaults to `value`.
        attention_mask: Optional boolean tensor broadcastable to `(B, T, S)`;
            `True` marks positions that may be attended to.
        use_causal_mask: Boolean, whether to also apply a causal mask so that
            position `i` attends only to positions `j <= i`.
        return_attention_scores: Boolean, whether to also return the attention
            probabilities of shape `(B, num_heads, T, S)`.
        training: Unused (no dropout); accepted for API compatibility.

    Returns:
        Tensor of shape `(B, T, output_shape or dim)`, and the attention scores
        if `return_attention_scores=True`.

    Example:

    >>> layer = FactorizedAttention(num_heads=4, key_dim=4, rank=2)
    >>> x = keras.ops.ones((2, 5, 16))
    >>> layer(x, x, use_causal_mask=True).shape
    (2, 5, 16)
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        rank,
        value_dim=None,
        query_rank=None,
        key_rank=None,
        value_rank=None,
        output_rank=None,
        use_bias=True,
        output_shape=None,
        kernel_u_initializer="auto",
        kernel_v_initializer="auto",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = check_int("num_heads", num_heads)
        self.key_dim = check_int("key_dim", key_dim)
        self.rank = check_int("rank", rank)
        self.value_dim = check_int("value_dim", value_dim, allow_none=True)
        self.query_rank = check_int("query_rank", query_rank, allow_none=True)
        self.key_rank = check_int("key_rank", key_rank, allow_none=True)
        self.value_rank = check_int("value_rank", value_rank, allow_none=True)
        self.output_rank = check_int("output_rank", output_rank, allow_none=True)
        self.use_bias = _init.validate_bool("use_bias", use_bias)
        self._output_shape_arg = check_int(
            "output_shape", output_shape, allow_none=True
        )
        self.kernel_u_initializer = _init.get_initializer(
            "kernel_u_initializer", kernel_u_initializer
        )
        self.kernel_v_initializer = _init.get_initializer(
            "kernel_v_initializer", kernel_v_initializer
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self._value_dim = self.value_dim or self.key_dim

    def _projection(self, units, rank, name):
        def clone(init):
            if isinstance(init, str):
                return init
            return init.__class__.from_config(init.get_config())

        return FactorizedDense(
            units,
            rank,
            use_bias=self.use_bias,
            kernel_u_initializer=clone(self.kernel_u_initializer),
            kernel_v_initializer=clone(self.kernel_v_initializer),
            bias_initializer=clone(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        out_dim = self._output_shape_arg or query_shape[-1]
        self.query_dense = self._projection(
            self.num_heads * self.key_dim, self.query_rank or self.rank, "query"
        )
        self.key_dense = self._projection(
            self.num_heads * self.key_dim, self.key_rank or self.rank, "key"
        )
        self.value_dense = self._projection(
            self.num_heads * self._value_dim, self.value_rank or self.rank, "value"
        )
        self.output_dense = self._projection(
            out_dim, self.output_rank or self.rank, "attention_output"
        )
        self.query_dense.build(query_shape)
        self.key_dense.build(key_shape)
        self.value_dense.build(value_shape)
        self.output_dense.build(tuple(query_shape)[:-1] + (self.num_heads * self._value_dim,))

    @staticmethod
    def _split_heads(x, num_heads, head_dim):
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1], num_heads, head_dim))

    def _compute_mask(self, query, value, attention_mask, use_causal_mask):
        mask = None
        if attention_mask is not None:
            mask = ops.cast(attention_mask, "bool")
        if use_causal_mask:
            q_len = ops.shape(query)[1]
            v_len = ops.shape(value)[1]
            ones = ops.ones((1, q_len, v_len), dtype="int32")
            causal = ops.greater_equal(ops.cumsum(ones, axis=-2), ops.cumsum(ones, axis=-1))
            mask = causal if mask is None else ops.logical_and(mask, causal)
        return mask

    def call(
        self,
        query,
        value,
        key=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
    ):
        if key is None:
            key = value
        q = self._split_heads(self.query_dense(query), self.num_heads, self.key_dim)
        k = self._split_heads(self.key_dense(key), self.num_heads, self.key_dim)
        v = self._split_heads(self.value_dense(value), self.num_heads, self._value_dim)
        q = ops.multiply(q, ops.cast(1.0 / math.sqrt(self.key_dim), q.dtype))
        scores = ops.einsum("bqhd,bkhd->bhqk", q, k)
        mask = self._compute_mask(query, value, attention_mask, use_causal_mask)
        if mask is not None:
            # (B, T, S) -> (B, 1, T, S): the same mask for every head.
            mask = ops.expand_dims(mask, axis=-3)
            scores = ops.where(mask, scores, ops.cast(-1e9, scores.dtype))
        probs = ops.softmax(scores, axis=-1)
        out = ops.einsum("bhqk,bkhd->bqhd", probs, v)
        shape = ops.shape(out)
        out = ops.reshape(out, (shape[0], shape[1], self.num_heads * self._value_dim))
        out = self.output_dense(out)
        if return_attention_scores:
            return out, probs
        return out

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        out_dim = self._output_shape_arg or query_shape[-1]
        return tuple(query_shape)[:-1] + (out_dim,)

    def compute_output_spec(
        self,
        query,
        value,
        key=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
    ):
        out_shape = self.compute_output_shape(query.shape, value.shape)
        out = keras.KerasTensor(out_shape, dtype=self.compute_dtype)
        if return_attention_scores:
            scores_shape = (query.shape[0], self.num_heads, query.shape[1], value.shape[1])
            return out, keras.KerasTensor(scores_shape, dtype=self.compute_dtype)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "rank": self.rank,
                "value_dim": self.value_dim,
                "query_rank": self.query_rank,
                "key_rank": self.key_rank,
                "value_rank": self.value_rank,
                "output_rank": self.output_rank,
                "use_bias": self.use_bias,
                "output_shape": self._output_shape_arg,
                "kernel_u_initializer": _init.serialize_initializer(self.kernel_u_initializer),
                "kernel_v_initializer": _init.serialize_initializer(self.kernel_v_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config

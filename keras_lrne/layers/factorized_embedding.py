"""`FactorizedEmbedding`: an embedding table stored as a low-rank product."""

import math

import keras
from keras import ops

from keras_lrne._validation import check_int
from keras_lrne.layers import _init, _low_rank
from keras_lrne.layers._tied_head import TiedHeadMixin


@keras.saving.register_keras_serializable(package="keras_lrne")
class FactorizedEmbedding(TiedHeadMixin, keras.layers.Layer):
    """Token embedding whose table is a low-rank product `U @ V`.

    `call(ids)` gathers rows of `embeddings_u (input_dim, rank)` and multiplies
    them by `embeddings_v (rank, output_dim)`; the full `(input_dim, output_dim)`
    table is never materialised. `attend(x)` (or `call(x, reverse=True)`) is the
    tied output head `x @ (U @ V)^T (+ output_bias)`, computed as
    `(x @ V^T) @ U^T`.

    Reference: Garbus & Pollack, "Low Rank Factorizations are Indirect Encodings
    for Deep Neuroevolution" (arXiv 2504.03037, 2025): the token embedding uses
    rank `embed_rank` and the output head is tied to it, with an unfactorized
    output bias of size `input_dim`.

    With `"auto"` initialisers the product matches the unfactorized N(0, 1)
    embedding: Var(U) = 1 and Var(V) = 1/rank, so Var(U @ V) = 1.
    A `UserWarning` is emitted when `rank >= min(input_dim, output_dim)`.

    Args:
        input_dim: Positive integer, vocabulary size.
        output_dim: Positive integer, embedding dimension.
        rank: Positive integer, inner dimension of the factorization.
        embeddings_u_initializer: `"auto"` or initializer of `embeddings_u`.
        embeddings_v_initializer: `"auto"` or initializer of `embeddings_v`.
        use_output_bias: Boolean, whether `attend` adds a trainable
            `output_bias` of shape `(input_dim,)`.
        output_bias_initializer: Initializer of `output_bias`; defaults to
            N(0, 2) as in the paper.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: Integer token ids of any shape, or (with `reverse=True`) a float
            tensor of shape `(..., output_dim)`.
        reverse: Boolean. `False` embeds ids; `True` runs the tied output head.

    Returns:
        `(..., output_dim)` embeddings, or `(..., input_dim)` logits when
        `reverse=True`.

    Example:

    >>> emb = FactorizedEmbedding(100, 16, rank=4, use_output_bias=True)
    >>> h = emb(keras.ops.zeros((2, 7), dtype="int32"))
    >>> emb.attend(h).shape
    (2, 7, 100)
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        rank,
        embeddings_u_initializer="auto",
        embeddings_v_initializer="auto",
        use_output_bias=False,
        output_bias_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_dim = check_int("input_dim", input_dim)
        self.output_dim = check_int("output_dim", output_dim)
        self.rank = check_int("rank", rank)
        self.embeddings_u_initializer = _init.get_initializer(
            "embeddings_u_initializer", embeddings_u_initializer
        )
        self.embeddings_v_initializer = _init.get_initializer(
            "embeddings_v_initializer", embeddings_v_initializer
        )
        self.use_output_bias = _init.validate_bool("use_output_bias", use_output_bias)
        if output_bias_initializer is None:
            output_bias_initializer = keras.initializers.RandomNormal(stddev=math.sqrt(2.0))
        self.output_bias_initializer = keras.initializers.get(output_bias_initializer)
        self.autocast = False
        _init.warn_if_not_factorized(self.name, self.rank, self.input_dim, self.output_dim)

    def build(self, input_shape=None):
        u_init = self.embeddings_u_initializer
        if u_init == _init.AUTO:
            u_init = keras.initializers.RandomNormal(stddev=1.0)
        v_init = self.embeddings_v_initializer
        if v_init == _init.AUTO:
            v_init = keras.initializers.RandomNormal(stddev=math.sqrt(1.0 / self.rank))
        self._resolved_initializers = {"embeddings_u": u_init, "embeddings_v": v_init}
        self.embeddings_u = self.add_weight(
            name="embeddings_u", shape=(self.input_dim, self.rank), initializer=u_init
        )
        self.embeddings_v = self.add_weight(
            name="embeddings_v", shape=(self.rank, self.output_dim), initializer=v_init
        )
        if self.use_output_bias:
            self._resolved_initializers["output_bias"] = self.output_bias_initializer
            self.output_bias = self.add_weight(
                name="output_bias",
                shape=(self.input_dim,),
                initializer=self.output_bias_initializer,
            )
        else:
            self.output_bias = None

    @property
    def embeddings(self):
        """The full table `embeddings_u @ embeddings_v` (read-only)."""
        if not self.built:
            raise AttributeError("You must build the layer before accessing `embeddings`.")
        return ops.matmul(self.embeddings_u, self.embeddings_v)

    #: Factors whose member perturbations `call` adds unmaterialised (`_low_rank`).
    _lrne_unmaterialized = ("embeddings_u", "embeddings_v")

    def call(self, inputs, reverse=False):
        if reverse:
            x = ops.cast(inputs, self.compute_dtype)
            logits = _low_rank.transposed_matmul(
                _low_rank.transposed_matmul(x, self.embeddings_v), self.embeddings_u)
            if self.output_bias is not None:
                logits = ops.add(logits, ops.cast(self.output_bias, self.compute_dtype))
            return logits
        if "int" not in keras.backend.standardize_dtype(inputs.dtype):
            inputs = ops.cast(inputs, "int32")
        rows = _low_rank.take(self.embeddings_u, inputs)
        out = _low_rank.matmul(rows, self.embeddings_v)
        return ops.cast(out, self.compute_dtype)

    def evolution_info(self):
        """Mutation metadata for this layer's own trainable variables.

        Returns:
            Dict `{variable_name: {"init_std": float, "factor": bool}}` for
            `embeddings_u`, `embeddings_v` (factors) and, if used,
            `output_bias` (not a factor).
        """
        return _init.factor_evolution_info(
            self,
            ("embeddings_u", "embeddings_v", "output_bias"),
            ("embeddings_u", "embeddings_v"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "rank": self.rank,
                "embeddings_u_initializer": _init.serialize_initializer(
                    self.embeddings_u_initializer
                ),
                "embeddings_v_initializer": _init.serialize_initializer(
                    self.embeddings_v_initializer
                ),
                "use_output_bias": self.use_output_bias,
                "output_bias_initializer": keras.initializers.serialize(
                    self.output_bias_initializer
                ),
            }
        )
        return config

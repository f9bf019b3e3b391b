"""`TiedEmbedding`: a full (unfactorized) embedding with a tied output head."""

import math

import keras
from keras import ops

from keras_lrne._validation import check_int
from keras_lrne.layers import _init, _low_rank
from keras_lrne.layers._tied_head import TiedHeadMixin


@keras.saving.register_keras_serializable(package="keras_lrne")
class TiedEmbedding(TiedHeadMixin, keras.layers.Embedding):
    """`keras.layers.Embedding` with a tied output head and output bias.

    The unfactorized, direct-encoding baseline of `FactorizedEmbedding`.
    `call(ids)` is the ordinary embedding lookup; `attend(x)` (or
    `call(x, reverse=True)`) computes the tied logits
    `x @ embeddings.T (+ output_bias)`. `build` creates `embeddings` and then
    `output_bias`.

    Reference: Garbus & Pollack, "Low Rank Factorizations are Indirect Encodings
    for Deep Neuroevolution" (arXiv 2504.03037, 2025): unfactorized embedding
    N(0, 1), output-head bias N(0, 2).

    Args:
        input_dim: Positive integer, vocabulary size.
        output_dim: Positive integer, embedding dimension.
        use_output_bias: Boolean, whether `attend` adds a trainable
            `output_bias` of shape `(input_dim,)`.
        embeddings_initializer: Initializer of `embeddings`; defaults to N(0, 1).
        output_bias_initializer: Initializer of `output_bias`; defaults to
            N(0, 2) (stddev `sqrt(2)`).
        **kwargs: Other `keras.layers.Embedding` keyword arguments.

    Call arguments:
        inputs: Integer token ids, or (with `reverse=True`) a float tensor of
            shape `(..., output_dim)`.
        reverse: Boolean. `False` embeds ids; `True` runs the tied output head.

    Returns:
        `(..., output_dim)` embeddings, or `(..., input_dim)` logits when
        `reverse=True`.

    Example:

    >>> emb = TiedEmbedding(100, 16)
    >>> h = emb(keras.ops.zeros((2, 7), dtype="int32"))
    >>> emb.attend(h).shape
    (2, 7, 100)
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        use_output_bias=True,
        embeddings_initializer=None,
        output_bias_initializer=None,
        **kwargs,
    ):
        input_dim = check_int("input_dim", input_dim)
        output_dim = check_int("output_dim", output_dim)
        if embeddings_initializer is None:
            embeddings_initializer = keras.initializers.RandomNormal(stddev=1.0)
        super().__init__(
            input_dim, output_dim, embeddings_initializer=embeddings_initializer, **kwargs
        )
        self.use_output_bias = _init.validate_bool("use_output_bias", use_output_bias)
        if output_bias_initializer is None:
            output_bias_initializer = keras.initializers.RandomNormal(stddev=math.sqrt(2.0))
        self.output_bias_initializer = keras.initializers.get(output_bias_initializer)

    def build(self, input_shape=None):
        if self.built:
            return
        super().build(input_shape)
        if self.use_output_bias:
            self.output_bias = self.add_weight(
                name="output_bias",
                shape=(self.input_dim,),
                initializer=self.output_bias_initializer,
            )
        else:
            self.output_bias = None

    @property
    def variable_serialization_spec(self):
        # Save/load `output_bias` after the variables Keras' Embedding stores.
        spec = {mode: list(names) for mode, names in super().variable_serialization_spec.items()}
        if self.use_output_bias:
            for names in spec.values():
                names.append("output_bias")
        return spec

    #: Variables whose member perturbations `call` adds unmaterialised.
    _lrne_unmaterialized = ("embeddings",)

    def call(self, inputs, reverse=False):
        if self.lora_enabled or self.quantization_mode:
            # Keras' own merge (LoRA, quantization): no member perturbation to add.
            if not reverse:
                return super().call(inputs)
            table = ops.cast(self.embeddings, self.compute_dtype)
            logits = ops.matmul(ops.cast(inputs, self.compute_dtype), ops.transpose(table))
        elif not reverse:
            ids = inputs if inputs.dtype in ("int32", "int64") else ops.cast(inputs, "int32")
            return ops.cast(_low_rank.take(self._embeddings, ids), self.compute_dtype)
        else:
            logits = _low_rank.transposed_matmul(ops.cast(inputs, self.compute_dtype),
                                                 self._embeddings)
        if self.output_bias is not None:
            logits = ops.add(logits, ops.cast(self.output_bias, self.compute_dtype))
        return logits

    def evolution_info(self):
        """Mutation metadata for this layer's own trainable variables.

        Returns:
            Dict `{variable_name: {"init_std": float, "factor": False}}` for
            `embeddings` and, if used, `output_bias`.
        """
        if not self.built:
            raise ValueError(
                f"Layer '{self.name}' must be built before calling `evolution_info()`."
            )
        info = {
            "embeddings": {
                "init_std": _init.initializer_std(
                    self.embeddings_initializer, (self.input_dim, self.output_dim)
                ),
                "factor": False,
            }
        }
        if self.output_bias is not None:
            info["output_bias"] = {
                "init_std": _init.initializer_std(self.output_bias_initializer, (self.input_dim,)),
                "factor": False,
            }
        return info

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "use_output_bias": self.use_output_bias,
                "output_bias_initializer": keras.initializers.serialize(
                    self.output_bias_initializer
                ),
            }
        )
        return config

"""Model builders for the paper's experiments."""

import math
import warnings

import keras

from keras_lrne._validation import check_int
from keras_lrne.layers import (
    FactorizedEmbedding,
    RotaryPosition,
    TiedEmbedding,
    TransformerBlock,
)

#: `language_model(init=...)`: the paper's initialisation, or unit-scale tied logits.
_LM_INITS = ("paper", "scaled")

_LM_VARIANTS = {
    # variant: (default hidden_dim, default ff_dim, factorized)
    "full": (32, 128, False),
    "factorized": (32, 128, True),
    "small": (4, 16, False),
}


def _model_class():
    from keras_lrne.models import Model

    return Model


def language_model(
    variant="factorized",
    vocab_size=2051,
    sequence_length=128,
    hidden_dim=None,
    num_layers=3,
    num_heads=4,
    key_dim=4,
    ff_dim=None,
    rank=4,
    embed_rank=32,
    qkv_rank=None,
    o_rank=None,
    ff_rank=None,
    rotary_dims=4,
    init="paper",
    name=None,
):
    """Builds the paper's TinyStories decoder-only language model.

    `Input((sequence_length,), int32)` -> token embedding -> `RotaryPosition`
    on the first `rotary_dims` channels -> `num_layers` post-norm causal
    `TransformerBlock`s -> tied output head (`embedding.attend`, with an
    unfactorized output bias of size `vocab_size`) giving logits
    `(batch, sequence_length, vocab_size)`. There is no final LayerNorm.

    Reference: Garbus & Pollack, "Low Rank Factorizations are Indirect Encodings
    for Deep Neuroevolution" (arXiv 2504.03037, 2025). Parameter counts:
    "full" 99,507; "factorized" (rank 4, embed_rank 32) 75,955; "small"
    11,671; "factorized" with rank 1, embed_rank 4: 13,023.

    Args:
        variant: One of `"full"` (`TiedEmbedding` + plain blocks, hidden 32,
            FF 128), `"factorized"` (`FactorizedEmbedding(rank=embed_rank)` +
            factorized blocks, hidden 32, FF 128) or `"small"` (`TiedEmbedding`
            + plain blocks, hidden 4, FF 16).
        vocab_size: Positive integer, vocabulary size (2048 BPE + 3 specials).
        sequence_length: Positive integer, length of the input sequences.
        hidden_dim: Model width; `None` uses the variant's default.
        num_layers: Number of transformer blocks.
        num_heads: Number of attention heads.
        key_dim: Size of each attention head.
        ff_dim: Feed-forward width; `None` uses the variant's default.
        rank: Default rank of Q/K/V, output and feed-forward matrices
            ("factorized" only; ignored otherwise).
        embed_rank: Rank of the token embedding ("factorized" only).
        qkv_rank: Rank of Q/K/V projections; defaults to `rank`.
        o_rank: Rank of the attention output projection; defaults to `rank`.
        ff_rank: Rank of the feed-forward matrices; defaults to `rank`.
        rotary_dims: Number of leading embedding channels that get rotary
            position encoding, capped at the model width; `None` or 0 disables it.
        init: `"paper"` (default): the paper's initialisation, a token-embedding
            table of N(0, 1) entries (for "factorized": `embeddings_u` N(0, 1),
            `embeddings_v` N(0, 1/embed_rank)). `"scaled"` (not the paper's): the
            table's entries have std `1/sqrt(hidden_dim)` instead (for "factorized",
            `embeddings_u` is N(0, 1/hidden_dim)), so the tied head's initial logits
            have unit scale rather than `sqrt(hidden_dim)` (as in T5's tied head).
            Evolution then starts near the uniform baseline instead of far above
            it: on the embedded corpus with character tokens, 500 generations of
            `GA(32, 4)` end at 3.35 nats instead of 4.04 (uniform: 4.65, unigram: 3.25).
        name: Model name; defaults to `"lrne_lm_<variant>"`.

    Returns:
        A functional `keras_lrne.Model`.

    Example:

    >>> model = language_model("full")
    >>> model.count_params()
    99507
    """
    if variant not in _LM_VARIANTS:
        raise ValueError(
            "Received an invalid value for `variant`, expected one of "
            f"{sorted(_LM_VARIANTS)}. Received: variant={variant!r}"
        )
    default_hidden, default_ff, factorized = _LM_VARIANTS[variant]
    vocab_size = check_int("vocab_size", vocab_size)
    sequence_length = check_int("sequence_length", sequence_length)
    hidden_dim = check_int(
        "hidden_dim", default_hidden if hidden_dim is None else hidden_dim
    )
    ff_dim = check_int("ff_dim", default_ff if ff_dim is None else ff_dim)
    num_layers = check_int("num_layers", num_layers)
    if rotary_dims:
        rotary_dims = check_int("rotary_dims", rotary_dims)
        rotary_dims = min(rotary_dims, hidden_dim)
        rotary_dims -= rotary_dims % 2
    if init not in _LM_INITS:
        raise ValueError(
            f"Received an invalid value for `init`, expected one of {_LM_INITS}. "
            f"Received: init={init!r}"
        )
    # The table's std: 1 (paper) or 1/sqrt(hidden_dim) ("scaled").
    table_std = 1.0 if init == "paper" else 1.0 / math.sqrt(hidden_dim)
    name = name or f"lrne_lm_{variant}"

    inputs = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    if factorized:
        rank = check_int("rank", rank)
        embed_rank = check_int("embed_rank", embed_rank)
        with warnings.catch_warnings():
            # The paper's embed_rank 32 at width 32 is intentionally not smaller.
            warnings.filterwarnings("ignore", message=".*no factorization.*")
            embedding = FactorizedEmbedding(
                vocab_size,
                hidden_dim,
                rank=embed_rank,
                use_output_bias=True,
                embeddings_u_initializer=(
                    "auto" if init == "paper"
                    else keras.initializers.RandomNormal(stddev=table_std)),
                name="token_embedding",
            )
        block_ranks = {"rank": rank, "qkv_rank": qkv_rank, "o_rank": o_rank, "ff_rank": ff_rank}
    else:
        embedding = TiedEmbedding(
            vocab_size, hidden_dim, name="token_embedding",
            embeddings_initializer=(
                None if init == "paper" else keras.initializers.RandomNormal(stddev=table_std)),
        )
        block_ranks = {}
    x = embedding(inputs)
    if rotary_dims:
        x = RotaryPosition(dims=rotary_dims, name="rotary_position")(x)
    for i in range(num_layers):
        x = TransformerBlock(
            num_heads, key_dim, ff_dim, name=f"transformer_block_{i}", **block_ranks
        )(x)
    logits = embedding.attend(x)
    return _model_class()(inputs, logits, name=name)


# RL policies: conv stacks `(filters, kernel, stride)` then `Dense(units, relu)` and a
# linear action head. "small" widths reproduce the paper's parameter counts exactly
# (they are the widths in the authors' `*-nofa-small` experiment configs).
_ATARI_KERNELS = ((8, 4), (4, 2), (3, 1))
_ATARI_WIDTHS = {
    # variant: (conv filters, dense units)
    "full": ((32, 64, 64), 256),
    "factorized": ((32, 64, 64), 256),
    "small": ((4, 8, 8), 32),
}
_CARRACING_KERNELS = ((4, 2), (4, 2), (4, 2), (4, 2))
_CARRACING_WIDTHS = {
    "full": ((32, 64, 128, 256), 256),
    "factorized": ((32, 64, 128, 256), 256),
    "small": ((4, 4, 8, 16), 32),
}


def _kaiming_normal():
    """N(0, 2/fan_in): the paper's initialisation of full kernels."""
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


def _validate_image_shape(input_shape):
    valid = isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
    if valid:
        try:
            input_shape = tuple(check_int("input_shape", d) for d in input_shape)
        except ValueError:
            valid = False
    if not valid:
        raise ValueError(
            "Received an invalid value for `input_shape`, expected a tuple of 3 positive "
            f"integers (height, width, channels). Received: input_shape={input_shape!r}"
        )
    return input_shape


def _conv_policy(variant, variants, kernels, num_actions, rank, input_shape, name, prefix):
    from keras_lrne.layers import FactorizedConv2D, FactorizedDense

    if variant not in variants:
        raise ValueError(
            "Received an invalid value for `variant`, expected one of "
            f"{sorted(variants)}. Received: variant={variant!r}"
        )
    num_actions = check_int("num_actions", num_actions)
    input_shape = _validate_image_shape(input_shape)
    factorized = variant == "factorized"
    if factorized:
        rank = check_int("rank", rank)
    filters, units = variants[variant]
    name = name or f"lrne_{prefix}_{variant}"

    inputs = keras.Input(shape=input_shape, dtype="float32", name="frames")
    x = inputs
    for i, (width, (kernel, stride)) in enumerate(zip(filters, kernels)):
        if factorized:
            conv = FactorizedConv2D(
                width, kernel, rank=rank, strides=stride, padding="valid",
                activation="relu", name=f"conv_{i}",
            )  # fmt: skip
        else:
            conv = keras.layers.Conv2D(
                width, kernel, strides=stride, padding="valid", activation="relu",
                kernel_initializer=_kaiming_normal(), bias_initializer="zeros",
                name=f"conv_{i}",
            )  # fmt: skip
        x = conv(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if factorized:
        x = FactorizedDense(units, rank=rank, activation="relu", name="dense")(x)
    else:
        x = keras.layers.Dense(
            units, activation="relu", kernel_initializer=_kaiming_normal(), name="dense"
        )(x)
    head = keras.layers.Dense(num_actions, kernel_initializer=_kaiming_normal(), name="actions")
    outputs = head(x)
    return _model_class()(inputs, outputs, name=name)


def atari_policy(variant="factorized", num_actions=18, rank=4, input_shape=(84, 84, 12), name=None):
    """Builds the paper's Atari policy: the Nature-DQN network.

    `Input(input_shape, float32)` (4 stacked RGB frames already scaled to
    `[0, 1]`) -> conv 8x8 stride 4 -> conv 4x4 stride 2 -> conv 3x3 stride 1
    (ReLU, "valid" padding) -> flatten -> dense ReLU -> linear `Dense(num_actions)`
    giving one score per action (the policy acts greedily on them).

    Reference: Garbus & Pollack, "Low Rank Factorizations are Indirect Encodings
    for Deep Neuroevolution" (arXiv 2504.03037, 2025). Parameter counts with
    18 actions: "full" 902,066; "factorized" (rank 4) 26,674; "small" 17,350.

    Args:
        variant: One of `"full"` (`Conv2D` 32, 64, 64 filters, `Dense(256)`;
            kernels N(0, 2/fan_in), zero biases), `"factorized"` (the same
            widths with every conv a `FactorizedConv2D` and the 256-unit layer a
            `FactorizedDense`, both of rank `rank`; the action layer stays a plain
            `Dense`) or `"small"` (unfactorized, 4, 8, 8 filters and
            `Dense(32)`: every width of "full" divided by 8, as in the authors'
            code; the only width pattern with the full network's proportions that
            gives exactly 17,350 parameters).
        num_actions: Positive integer, size of the action space (18 = full ALE set).
        rank: Positive integer, rank of the factorized layers ("factorized"
            only; ignored otherwise).
        input_shape: `(height, width, channels)` of the stacked frames.
        name: Model name; defaults to `"lrne_atari_<variant>"`.

    Returns:
        A functional `keras_lrne.Model` mapping `(batch, *input_shape)` frames to
        `(batch, num_actions)` action scores.

    Example:

    >>> model = atari_policy("factorized")
    >>> model.count_params()
    26674
    """
    return _conv_policy(
        variant, _ATARI_WIDTHS, _ATARI_KERNELS, num_actions, rank, input_shape, name, "atari"
    )


def carracing_policy(
    variant="factorized", num_actions=3, rank=1, input_shape=(64, 64, 12), name=None
):
    """Builds the paper's CarRacing-v3 policy.

    `Input(input_shape, float32)` (4 stacked 64x64 RGB frames scaled to
    `[0, 1]`) -> 4 convs 4x4 stride 2 (ReLU, "valid" padding: 64 -> 31 -> 14
    -> 6 -> 2) -> flatten -> dense ReLU -> linear `Dense(num_actions)` (identity
    outputs: steering, gas, brake).

    Reference: Garbus & Pollack, "Low Rank Factorizations are Indirect Encodings
    for Deep Neuroevolution" (arXiv 2504.03037, 2025). Parameter counts with
    3 actions: "full" 957,923; "factorized" (rank 1) 7,043; "small" 5,795.

    Args:
        variant: One of `"full"` (`Conv2D` 32, 64, 128, 256 filters,
            `Dense(256)`; kernels N(0, 2/fan_in), zero biases), `"factorized"`
            (the same widths with every conv a `FactorizedConv2D` and the
            256-unit layer a `FactorizedDense`, both of rank `rank`; the action
            layer stays a plain `Dense`) or `"small"` (unfactorized, 4, 4, 8, 16
            filters and `Dense(32)`, the widths of the authors' code, giving
            exactly 5,795 parameters).
        num_actions: Positive integer, size of the continuous action vector.
        rank: Positive integer, rank of the factorized layers ("factorized"
            only; ignored otherwise).
        input_shape: `(height, width, channels)` of the stacked frames.
        name: Model name; defaults to `"lrne_carracing_<variant>"`.

    Returns:
        A functional `keras_lrne.Model` mapping `(batch, *input_shape)` frames to
        `(batch, num_actions)` actions.

    Example:

    >>> model = carracing_policy("factorized")
    >>> model.count_params()
    7043
    """
    return _conv_policy(
        variant, _CARRACING_WIDTHS, _CARRACING_KERNELS, num_actions, rank, input_shape, name,
        "carracing",
    )  # fmt: skip


_CONTROL_WIDTHS = {"full": 256, "factorized": 256, "small": 16}


def control_policy(variant="factorized", input_dim=17, num_actions=6, rank=4, num_layers=2,
                   name=None):
    """Builds an MLP policy for vector-observation control (MuJoCo and friends).

    Not one of the paper's networks (the paper evolved pixels-to-actions policies); the
    same three variants applied to a two-hidden-layer MLP: "full" (`Dense(256)` x
    `num_layers`, ReLU, N(0, 2/fan_in) kernels), "factorized" (every hidden layer a
    `FactorizedDense(256, rank)`; the action layer stays a plain `Dense`) and "small"
    (`Dense(16)` hidden layers).

    Args:
        variant: `"full"`, `"factorized"` or `"small"`.
        input_dim: Positive integer, size of the observation vector (HalfCheetah: 17).
        num_actions: Positive integer, size of the action vector (HalfCheetah: 6).
        rank: Positive integer, rank of the factorized layers ("factorized" only). A
            hidden layer whose input is not wider than `rank` (the first one, for
            observations of at most `rank` numbers) is a plain `Dense`: a factorization
            would hold more parameters than the matrix.
        num_layers: Positive integer, hidden layers.
        name: Model name; defaults to `"lrne_control_<variant>"`.

    Returns:
        A functional `keras_lrne.Model` mapping `(batch, input_dim)` observations to
        `(batch, num_actions)` raw actions (the task maps them to the action bounds).

    Example:

    >>> model = control_policy("factorized", input_dim=17, num_actions=6)
    >>> model.count_params()
    5194
    """
    from keras_lrne.layers import FactorizedDense

    if variant not in _CONTROL_WIDTHS:
        raise ValueError(
            "Received an invalid value for `variant`, expected one of "
            f"{sorted(_CONTROL_WIDTHS)}. Received: variant={variant!r}"
        )
    input_dim = check_int("input_dim", input_dim)
    num_actions = check_int("num_actions", num_actions)
    num_layers = check_int("num_layers", num_layers)
    if variant == "factorized":
        rank = check_int("rank", rank)
    width = _CONTROL_WIDTHS[variant]
    inputs = keras.Input(shape=(input_dim,), dtype="float32", name="observations")
    x = inputs
    for i in range(num_layers):
        fan_in = input_dim if i == 0 else width
        # A rank >= min(fan_in, width) would save nothing (small observation vectors,
        # e.g. CartPole's 4): such a layer stays a plain Dense, its exact equivalent.
        if variant == "factorized" and rank < min(fan_in, width):
            x = FactorizedDense(width, rank=rank, activation="relu", name=f"hidden_{i}")(x)
        else:
            x = keras.layers.Dense(width, activation="relu", kernel_initializer=_kaiming_normal(),
                                   name=f"hidden_{i}")(x)
    outputs = keras.layers.Dense(num_actions, kernel_initializer=_kaiming_normal(),
                                 name="actions")(x)
    return _model_class()(inputs, outputs, name=name or f"lrne_control_{variant}")

"""Tests for keras_lrne.layers."""

import math
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_lrne import layers as lrl

ALL_BAD_INTS = [0, -1, 1.5, True, None]


def _np(x):
    return ops.convert_to_numpy(x)


def _weights(layer):
    return [(w.name, tuple(w.shape)) for w in layer.trainable_weights]


# ---------------------------------------------------------------- FactorizedDense


def test_factorized_dense_weights_and_output():
    layer = lrl.FactorizedDense(6, rank=2)
    x = np.random.RandomState(0).randn(3, 5, 8).astype("float32")
    y = layer(x)
    assert _weights(layer) == [("kernel_u", (8, 2)), ("kernel_v", (2, 6)), ("bias", (6,))]
    assert tuple(y.shape) == (3, 5, 6)
    layer.bias.assign(np.arange(6, dtype="float32"))
    expected = x @ _np(layer.kernel) + np.arange(6)
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        _np(layer.kernel), _np(layer.kernel_u) @ _np(layer.kernel_v), rtol=1e-6
    )
    assert layer.compute_output_shape((None, 7, 8)) == (None, 7, 6)


def test_factorized_dense_no_bias_and_activation():
    layer = lrl.FactorizedDense(4, rank=1, use_bias=False, activation="relu")
    x = np.random.RandomState(1).randn(10, 8).astype("float32")
    y = _np(layer(x))
    assert _weights(layer) == [("kernel_u", (8, 1)), ("kernel_v", (1, 4))]
    np.testing.assert_allclose(y, np.maximum(x @ _np(layer.kernel), 0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", ALL_BAD_INTS)
def test_factorized_dense_bad_rank(bad):
    with pytest.raises(ValueError, match=f"`rank`.*rank={bad!r}"):
        lrl.FactorizedDense(4, rank=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.0, False, None])
def test_factorized_dense_bad_units(bad):
    with pytest.raises(ValueError, match="`units`"):
        lrl.FactorizedDense(bad, rank=2)


def test_rank_warning():
    with pytest.warns(UserWarning, match="no factorization"):
        lrl.FactorizedDense(4, rank=4).build((None, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrl.FactorizedDense(8, rank=3).build((None, 16))
    with pytest.warns(UserWarning, match="no factorization"):
        lrl.FactorizedEmbedding(10, 4, rank=5)


@pytest.mark.parametrize(
    "fan_in,units,expected",
    [(128, 512, lambda f: 2.0 / f), (512, 128, lambda f: 4.0 / f)],
)
def test_factorized_dense_init_variance(fan_in, units, expected):
    keras.utils.set_random_seed(0)
    layer = lrl.FactorizedDense(units, rank=16)
    layer.build((None, fan_in))
    var = float(np.var(_np(layer.kernel)))
    assert var == pytest.approx(expected(fan_in), rel=0.25)
    np.testing.assert_array_equal(_np(layer.bias), 0.0)


def test_factorized_dense_evolution_info():
    layer = lrl.FactorizedDense(32, rank=4)
    layer.build((None, 16))
    info = layer.evolution_info()
    assert list(info) == ["kernel_u", "kernel_v", "bias"]
    assert info["kernel_u"]["factor"] and info["kernel_v"]["factor"]
    assert not info["bias"]["factor"]
    assert info["kernel_u"]["init_std"] == pytest.approx(math.sqrt(math.sqrt(2) / 16))
    assert info["kernel_v"]["init_std"] == pytest.approx(math.sqrt(math.sqrt(2) / 4))
    assert info["bias"]["init_std"] == pytest.approx(math.sqrt(2 / 32))
    custom = lrl.FactorizedDense(
        8, rank=2, kernel_u_initializer=keras.initializers.RandomUniform(-1, 1, seed=1)
    )
    custom.build((None, 400))
    std = custom.evolution_info()["kernel_u"]["init_std"]
    assert std == pytest.approx(1 / math.sqrt(3), rel=0.1)


# ------------------------------------------------------------ FactorizedAttention


def _reference_attention(layer, q_in, v_in, mask):
    h, d = layer.num_heads, layer.key_dim

    def proj(dense, x):
        return x @ _np(dense.kernel) + _np(dense.bias)

    b, t, _ = q_in.shape
    s = v_in.shape[1]
    q = proj(layer.query_dense, q_in).reshape(b, t, h, d)
    k = proj(layer.key_dense, v_in).reshape(b, s, h, d)
    v = proj(layer.value_dense, v_in).reshape(b, s, h, d)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    if mask is not None:
        scores = np.where(mask[:, None], scores, -1e9)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, t, h * d)
    return proj(layer.output_dense, out)


def test_factorized_attention_weights_and_reference():
    layer = lrl.FactorizedAttention(num_heads=2, key_dim=3, rank=2, output_rank=1)
    rng = np.random.RandomState(0)
    q = rng.randn(2, 4, 8).astype("float32")
    v = rng.randn(2, 5, 8).astype("float32")
    out, scores = layer(q, v, return_attention_scores=True)
    assert tuple(out.shape) == (2, 4, 8)
    assert tuple(scores.shape) == (2, 2, 4, 5)
    assert [w.path.split("/", 1)[1] for w in layer.trainable_weights] == [
        "query/kernel_u", "query/kernel_v", "query/bias",
        "key/kernel_u", "key/kernel_v", "key/bias",
        "value/kernel_u", "value/kernel_v", "value/bias",
        "attention_output/kernel_u", "attention_output/kernel_v", "attention_output/bias",
    ]  # fmt: skip
    assert _weights(layer.output_dense) == [
        ("kernel_u", (6, 1)), ("kernel_v", (1, 8)), ("bias", (8,))
    ]  # fmt: skip
    for w in layer.trainable_weights:  # non-zero biases for a stronger check
        if w.name == "bias":
            w.assign(rng.randn(*w.shape).astype("float32"))
    mask = rng.rand(2, 4, 5) > 0.3
    mask[..., 0] = True
    np.testing.assert_allclose(
        _np(layer(q, v)), _reference_attention(layer, q, v, None), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        _np(layer(q, v, attention_mask=mask)),
        _reference_attention(layer, q, v, mask),
        rtol=1e-4,
        atol=1e-5,
    )
    assert layer.compute_output_shape((None, 4, 8), (None, 5, 8)) == (None, 4, 8)


def test_factorized_attention_causal():
    layer = lrl.FactorizedAttention(num_heads=2, key_dim=4, rank=2)
    x = np.random.RandomState(0).randn(1, 6, 8).astype("float32")
    y1 = _np(layer(x, x, use_causal_mask=True))
    x2 = x.copy()
    x2[:, 4:] += 5.0
    y2 = _np(layer(x2, x2, use_causal_mask=True))
    np.testing.assert_allclose(y1[:, :4], y2[:, :4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(y1[:, 4:], y2[:, 4:])
    _, scores = layer(x, x, use_causal_mask=True, return_attention_scores=True)
    upper = np.triu(np.ones((6, 6), bool), k=1)
    np.testing.assert_array_equal(_np(scores)[..., upper], 0.0)


@pytest.mark.parametrize("bad", ALL_BAD_INTS)
def test_factorized_attention_bad_args(bad):
    with pytest.raises(ValueError, match="`num_heads`"):
        lrl.FactorizedAttention(num_heads=bad if bad is not None else 0, key_dim=4, rank=2)
    with pytest.raises(ValueError, match="`rank`"):
        lrl.FactorizedAttention(num_heads=2, key_dim=4, rank=bad)


# ------------------------------------------------------------------- Embeddings


def test_factorized_embedding():
    emb = lrl.FactorizedEmbedding(50, 8, rank=3, use_output_bias=True)
    ids = np.array([[0, 3, 49], [7, 7, 1]], dtype="int32")
    out = _np(emb(ids))
    assert _weights(emb) == [
        ("embeddings_u", (50, 3)), ("embeddings_v", (3, 8)), ("output_bias", (50,))
    ]  # fmt: skip
    table = _np(emb.embeddings)
    np.testing.assert_allclose(out, table[ids], rtol=1e-5, atol=1e-6)
    x = np.random.RandomState(0).randn(2, 3, 8).astype("float32")
    np.testing.assert_allclose(
        _np(emb.attend(x)), x @ table.T + _np(emb.output_bias), rtol=1e-4, atol=1e-4
    )
    assert emb.compute_output_shape((None, 3)) == (None, 3, 8)
    assert emb.compute_output_shape((None, 3, 8), reverse=True) == (None, 3, 50)
    no_bias = lrl.FactorizedEmbedding(50, 8, rank=3)
    no_bias.build()
    assert [w.name for w in no_bias.trainable_weights] == ["embeddings_u", "embeddings_v"]


def test_factorized_embedding_init_and_info():
    keras.utils.set_random_seed(0)
    emb = lrl.FactorizedEmbedding(2000, 64, rank=16, use_output_bias=True)
    emb.build()
    assert float(np.var(_np(emb.embeddings))) == pytest.approx(1.0, rel=0.15)
    info = emb.evolution_info()
    assert info == {
        "embeddings_u": {"init_std": pytest.approx(1.0), "factor": True},
        "embeddings_v": {"init_std": pytest.approx(0.25), "factor": True},
        "output_bias": {"init_std": pytest.approx(math.sqrt(2)), "factor": False},
    }


@pytest.mark.parametrize("bad", ALL_BAD_INTS)
def test_factorized_embedding_bad_rank(bad):
    with pytest.raises(ValueError, match="`rank`"):
        lrl.FactorizedEmbedding(10, 4, rank=bad)


def test_tied_embedding():
    keras.utils.set_random_seed(0)
    emb = lrl.TiedEmbedding(300, 8)
    assert isinstance(emb, keras.layers.Embedding)
    ids = np.array([[1, 2, 299]], dtype="int32")
    out = _np(emb(ids))
    assert _weights(emb) == [("embeddings", (300, 8)), ("output_bias", (300,))]
    table = _np(emb.embeddings)
    np.testing.assert_allclose(out, table[ids])
    assert float(np.std(table)) == pytest.approx(1.0, rel=0.1)
    x = np.random.RandomState(0).randn(1, 3, 8).astype("float32")
    np.testing.assert_allclose(
        _np(emb.attend(x)), x @ table.T + _np(emb.output_bias), rtol=1e-4, atol=1e-4
    )
    info = emb.evolution_info()
    assert info["embeddings"] == {"init_std": pytest.approx(1.0), "factor": False}
    assert info["output_bias"] == {"init_std": pytest.approx(math.sqrt(2)), "factor": False}
    with pytest.raises(ValueError, match="`input_dim`"):
        lrl.TiedEmbedding(0, 8)


# ---------------------------------------------------------------- RotaryPosition


def test_rotary_position():
    layer = lrl.RotaryPosition(dims=4)
    x = np.random.RandomState(0).randn(2, 7, 6).astype("float32")
    y = _np(layer(x))
    assert y.shape == x.shape
    assert layer.trainable_weights == []
    np.testing.assert_allclose(y[:, 0], x[:, 0], rtol=1e-6)
    np.testing.assert_allclose(y[..., 4:], x[..., 4:])
    np.testing.assert_allclose(
        np.linalg.norm(y[..., :4], axis=-1), np.linalg.norm(x[..., :4], axis=-1), rtol=1e-5
    )
    # Position 1, first pair: rotation by 1 radian.
    c, s = math.cos(1.0), math.sin(1.0)
    e, o = x[:, 1, 0], x[:, 1, 1]
    np.testing.assert_allclose(y[:, 1, 0], e * c - o * s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[:, 1, 1], e * s + o * c, rtol=1e-5, atol=1e-6)
    assert not np.allclose(y[:, 1:, :4], x[:, 1:, :4])


@pytest.mark.parametrize("bad", [0, -2, 3, 2.0, True, None])
def test_rotary_bad_dims(bad):
    with pytest.raises(ValueError, match="`dims`"):
        lrl.RotaryPosition(dims=bad)


def test_rotary_dims_exceed_channels():
    with pytest.raises(ValueError, match="dims"):
        lrl.RotaryPosition(dims=8)(np.zeros((1, 2, 4), "float32"))


# -------------------------------------------------------------- TransformerBlock


def test_transformer_block_full_and_factorized():
    x = np.random.RandomState(0).randn(2, 5, 32).astype("float32")
    full = lrl.TransformerBlock(4, 4, 128)
    assert tuple(full(x).shape) == (2, 5, 32)
    assert full.count_params() == 10608
    assert isinstance(full.attention, keras.layers.MultiHeadAttention)
    q_kernel = _np(full.attention.query_dense.kernel)
    assert float(np.std(q_kernel)) == pytest.approx(math.sqrt(2 / 32), rel=0.2)
    fact = lrl.TransformerBlock(4, 4, 128, rank=4)
    assert tuple(fact(x).shape) == (2, 5, 32)
    assert fact.count_params() == 2416
    assert isinstance(fact.attention, lrl.FactorizedAttention)
    names = [w.path.split("/", 1)[1] for w in fact.trainable_weights]
    assert names[:3] == [
        "attention/query/kernel_u",
        "attention/query/kernel_v",
        "attention/query/bias",
    ]
    assert "feedforward_intermediate/kernel_u" in names
    mixed = lrl.TransformerBlock(4, 4, 128, qkv_rank=1, o_rank=1, ff_rank=None)
    mixed.build((None, 5, 32))
    assert isinstance(mixed.feedforward_output, keras.layers.Dense)
    with pytest.raises(ValueError, match="o_rank"):
        lrl.TransformerBlock(4, 4, 128, qkv_rank=2)
    with pytest.raises(ValueError, match="`num_heads`"):
        lrl.TransformerBlock(0, 4, 128)
    with pytest.raises(ValueError, match="`rank`"):
        lrl.TransformerBlock(4, 4, 128, rank=1.5)


@pytest.mark.parametrize("rank", [None, 2])
def test_transformer_block_causal(rank):
    block = lrl.TransformerBlock(2, 4, 16, rank=rank)
    x = np.random.RandomState(0).randn(1, 6, 8).astype("float32")
    x2 = x.copy()
    x2[:, 3:] = -x2[:, 3:]
    y1, y2 = _np(block(x)), _np(block(x2))
    np.testing.assert_allclose(y1[:, :3], y2[:, :3], rtol=1e-5, atol=1e-5)
    assert not np.allclose(y1[:, 3:], y2[:, 3:])


# ------------------------------------------------- config, stateless, save/load


def _all_layers():
    return [
        (lrl.FactorizedDense(5, rank=2, activation="relu", name="fd"), (None, 3, 8)),
        (lrl.FactorizedAttention(2, 3, rank=2, value_dim=4, key_rank=1, name="fa"), None),
        (lrl.FactorizedEmbedding(20, 8, rank=2, use_output_bias=True, name="fe"), (None, 3)),
        (lrl.TiedEmbedding(20, 8, use_output_bias=False, name="te"), (None, 3)),
        (lrl.RotaryPosition(dims=2, max_wavelength=100, name="rp"), (None, 3, 8)),
        (lrl.TransformerBlock(2, 3, 12, qkv_rank=2, o_rank=1, name="tb"), (None, 3, 8)),
    ]


@pytest.mark.parametrize("index", range(6))
def test_get_config_round_trip(index):
    layer, shape = _all_layers()[index]
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    if shape is None:
        layer.build((None, 3, 8), (None, 4, 8))
        clone.build((None, 3, 8), (None, 4, 8))
    else:
        layer.build(shape)
        clone.build(shape)
    assert _weights(clone) == _weights(layer)
    if shape is not None and not isinstance(layer, (lrl.FactorizedEmbedding, lrl.TiedEmbedding)):
        assert layer.compute_output_shape(shape)[-1] in (5, 8)


def _every_layer_model(seq=5):
    ids = keras.Input((seq,), dtype="int32")
    emb = lrl.FactorizedEmbedding(30, 8, rank=2, use_output_bias=True, name="fe")
    tied = lrl.TiedEmbedding(30, 8, name="te")
    x = emb(ids) + tied(ids)
    x = lrl.RotaryPosition(dims=4, name="rp")(x)
    x = lrl.TransformerBlock(2, 4, 16, name="tb_full")(x)
    x = lrl.TransformerBlock(2, 4, 16, rank=2, name="tb_fact")(x)
    x = x + lrl.FactorizedAttention(2, 4, rank=2, name="fa")(x, x, use_causal_mask=True)
    x = lrl.FactorizedDense(8, rank=3, activation="tanh", name="fd")(x)
    logits = emb.attend(x) + tied.attend(x)
    return keras.Model(ids, logits)


def test_functional_model_and_stateless_call():
    keras.utils.set_random_seed(0)
    model = _every_layer_model()
    ids = np.random.RandomState(0).randint(0, 30, size=(2, 5)).astype("int32")
    out = _np(model(ids))
    assert out.shape == (2, 5, 30)
    assert model.compute_output_shape((None, 5)) == (None, 5, 30)
    trainable = [ops.convert_to_tensor(v) for v in model.trainable_variables]
    stateless_out, _ = model.stateless_call(trainable, model.non_trainable_variables, ids)
    np.testing.assert_allclose(_np(stateless_out), out, rtol=1e-5, atol=1e-5)
    doubled = [t * 2.0 for t in trainable]
    changed, _ = model.stateless_call(doubled, model.non_trainable_variables, ids)
    assert not np.allclose(_np(changed), out)
    # Every layer owning variables reports them (names match its weights).
    for layer in model.layers:
        if hasattr(layer, "evolution_info"):
            info = layer.evolution_info()
            assert list(info) == [w.name for w in layer.trainable_weights]
            assert all(v["init_std"] > 0 for v in info.values())


@pytest.mark.slow
def test_keras_save_load_fresh_process(tmp_path, load_check):
    keras.utils.set_random_seed(1)
    model = _every_layer_model()
    ids = np.random.RandomState(1).randint(0, 30, size=(2, 5)).astype("int32")
    load_check(model, ids, tmp_path)

"""Tests for keras_lrne.presets."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_lrne import layers as lrl
from keras_lrne import presets

PAPER_COUNTS = [
    ("full", {}, 99_507),
    ("factorized", {}, 75_955),
    ("small", {}, 11_671),
    ("factorized", {"rank": 1, "embed_rank": 4}, 13_023),
]


@pytest.mark.parametrize("variant,kwargs,expected", PAPER_COUNTS)
def test_paper_parameter_counts(variant, kwargs, expected):
    model = presets.language_model(variant, sequence_length=8, **kwargs)
    assert model.count_params() == expected
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == expected
    assert model.non_trainable_weights == []


def test_variant_structure():
    full = presets.language_model("full", sequence_length=8)
    fact = presets.language_model("factorized", sequence_length=8)
    small = presets.language_model("small", sequence_length=8)
    assert isinstance(full.get_layer("token_embedding"), lrl.TiedEmbedding)
    assert isinstance(fact.get_layer("token_embedding"), lrl.FactorizedEmbedding)
    assert fact.get_layer("token_embedding").rank == 32
    assert fact.get_layer("transformer_block_2").qkv_rank is None
    assert fact.get_layer("transformer_block_2").rank == 4
    assert small.get_layer("rotary_position").dims == 4
    assert small.get_layer("token_embedding").output_dim == 4
    blocks = [layer for layer in full.layers if isinstance(layer, lrl.TransformerBlock)]
    assert len(blocks) == 3
    assert isinstance(keras.Model, type) and isinstance(full, keras.Model)


def test_overrides():
    model = presets.language_model(
        "factorized", vocab_size=50, sequence_length=6, hidden_dim=8, num_layers=1,
        num_heads=2, key_dim=2, ff_dim=16, qkv_rank=1, o_rank=2, ff_rank=3, embed_rank=2,
        rotary_dims=None, name="tiny",
    )  # fmt: skip
    assert model.name == "tiny"
    assert "rotary_position" not in [layer.name for layer in model.layers]
    block = model.get_layer("transformer_block_0")
    assert block.attention.query_dense.rank == 1
    assert block.attention.output_dense.rank == 2
    assert block.feedforward_intermediate.rank == 3


def test_forward_shape_and_causality():
    keras.utils.set_random_seed(0)
    model = presets.language_model("factorized", vocab_size=64, sequence_length=10)
    ids = np.random.RandomState(0).randint(0, 64, size=(2, 10)).astype("int32")
    out = ops.convert_to_numpy(model(ids))
    assert out.shape == (2, 10, 64)
    assert np.isfinite(out).all()
    ids2 = ids.copy()
    ids2[:, 6:] = (ids2[:, 6:] + 1) % 64
    out2 = ops.convert_to_numpy(model(ids2))
    np.testing.assert_allclose(out[:, :6], out2[:, :6], rtol=1e-4, atol=1e-4)
    assert not np.allclose(out[:, 6:], out2[:, 6:])


@pytest.mark.parametrize("bad", ["medium", "", None, "Full"])
def test_unknown_variant(bad):
    with pytest.raises(ValueError, match=r"`variant`.*'factorized'.*'full'.*'small'"):
        presets.language_model(bad)


def test_bad_ranks():
    with pytest.raises(ValueError, match="`rank`"):
        presets.language_model("factorized", rank=0)
    with pytest.raises(ValueError, match="`embed_rank`"):
        presets.language_model("factorized", embed_rank=1.5)


def test_evolution_info_covers_factors():
    model = presets.language_model("factorized", sequence_length=8)
    emb = model.get_layer("token_embedding")
    owners = [emb]
    for i in range(3):
        block = model.get_layer(f"transformer_block_{i}")
        att = block.attention
        owners += [att.query_dense, att.key_dense, att.value_dense, att.output_dense]
        owners += [block.feedforward_intermediate, block.feedforward_output]
    info = {}
    for layer in owners:
        for name, meta in layer.evolution_info().items():
            info[f"{id(layer)}/{name}"] = meta
    assert len(info) == 3 + 3 * 6 * 3
    factors = [k for k, v in info.items() if v["factor"]]
    # embedding U, V + 3 blocks x (4 attention + 2 FF) x (U, V)
    assert len(factors) == 2 + 3 * 6 * 2
    assert info[f"{id(emb)}/output_bias"]["factor"] is False
    assert all(v["init_std"] > 0 for v in info.values())


@pytest.mark.slow
def test_save_load_fresh_process(tmp_path, load_check):

    keras.utils.set_random_seed(2)
    model = presets.language_model(
        "factorized", vocab_size=40, sequence_length=6, num_layers=1, embed_rank=4
    )
    ids = np.random.RandomState(2).randint(0, 40, size=(2, 6)).astype("int32")
    load_check(model, ids, tmp_path)


def test_language_model_scaled_init_gives_unit_scale_logits():
    ids = np.random.default_rng(0).integers(2, 500, size=(4, 32)).astype("int32")
    stds = {}
    for init in ("paper", "scaled"):
        keras.utils.set_random_seed(0)
        model = presets.language_model("factorized", vocab_size=500, sequence_length=32,
                                       init=init)
        assert model.count_params() == presets.language_model(
            "factorized", vocab_size=500, sequence_length=32).count_params()
        table = keras.ops.convert_to_numpy(model.get_layer("token_embedding").embeddings)
        stds[init] = (float(table.std()), float(np.std(keras.ops.convert_to_numpy(model(ids)))))
    # The paper's table has unit entries, so logits ~ sqrt(32); scaled: both / sqrt(32).
    assert 0.8 < stds["paper"][0] < 1.2 and 0.8 / 32**0.5 < stds["scaled"][0] < 1.2 / 32**0.5
    assert stds["scaled"][1] < stds["paper"][1] / 2
    keras.utils.set_random_seed(0)
    full = presets.language_model("full", vocab_size=500, sequence_length=32, init="scaled")
    table = keras.ops.convert_to_numpy(full.get_layer("token_embedding").embeddings)
    assert 0.8 / 32**0.5 < table.std() < 1.2 / 32**0.5
    with pytest.raises(ValueError, match="init='kaiming'"):
        presets.language_model(init="kaiming")

"""Tests for the RL policy presets in keras_lrne.presets."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_lrne
from keras_lrne import layers as lrl
from keras_lrne import presets

BUILDERS = {"atari": presets.atari_policy, "carracing": presets.carracing_policy}
DEFAULTS = {"atari": ((84, 84, 12), 18), "carracing": ((64, 64, 12), 3)}
PAPER_COUNTS = {
    ("atari", "full"): 902_066,
    ("atari", "factorized"): 26_674,
    ("atari", "small"): 17_350,
    ("carracing", "full"): 957_923,
    ("carracing", "factorized"): 7_043,
    ("carracing", "small"): 5_795,
}


@pytest.fixture(scope="module")
def models():
    """Every preset at its paper defaults, built once for the module."""
    keras.utils.set_random_seed(0)
    return {key: BUILDERS[key[0]](key[1]) for key in PAPER_COUNTS}


@pytest.mark.parametrize("key", list(PAPER_COUNTS))
def test_paper_parameter_counts(models, key):
    model = models[key]
    assert model.count_params() == PAPER_COUNTS[key]
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == PAPER_COUNTS[key]
    assert model.non_trainable_weights == []
    assert isinstance(model, keras_lrne.Model)
    assert model.name == f"lrne_{key[0]}_{key[1]}"


@pytest.mark.parametrize("key", list(PAPER_COUNTS))
def test_forward_on_zeros(models, key):
    shape, num_actions = DEFAULTS[key[0]]
    model = models[key]
    assert model.input_shape == (None, *shape)
    assert model.inputs[0].dtype == "float32"
    out = ops.convert_to_numpy(model(np.zeros((2, *shape), "float32")))
    assert out.shape == (2, num_actions)
    assert np.isfinite(out).all()
    assert model.compute_output_shape((None, *shape)) == (None, num_actions)


def _conv_layers(model):
    return [layer for layer in model.layers if layer.name.startswith("conv_")]


def test_atari_structure(models):
    full, fact, small = (models["atari", v] for v in ("full", "factorized", "small"))
    for model, widths in ((full, (32, 64, 64)), (fact, (32, 64, 64)), (small, (4, 8, 8))):
        convs = _conv_layers(model)
        assert [c.filters for c in convs] == list(widths)
        assert [tuple(c.kernel_size) for c in convs] == [(8, 8), (4, 4), (3, 3)]
        assert [tuple(c.strides) for c in convs] == [(4, 4), (2, 2), (1, 1)]
        assert all(c.padding == "valid" for c in convs)
        assert model.get_layer("flatten").output.shape[-1] == 7 * 7 * widths[-1]
        assert type(model.get_layer("actions")) is keras.layers.Dense
        assert model.get_layer("actions").activation is keras.activations.linear
    assert all(type(c) is keras.layers.Conv2D for c in _conv_layers(full))
    assert all(isinstance(c, lrl.FactorizedConv2D) and c.rank == 4 for c in _conv_layers(fact))
    assert isinstance(fact.get_layer("dense"), lrl.FactorizedDense)
    assert fact.get_layer("dense").rank == 4
    assert fact.get_layer("dense").units == 256
    assert small.get_layer("dense").units == 32
    names = [w.path for w in fact.trainable_weights]
    assert names == [
        "conv_0/kernel_u", "conv_0/kernel_v", "conv_0/bias",
        "conv_1/kernel_u", "conv_1/kernel_v", "conv_1/bias",
        "conv_2/kernel_u", "conv_2/kernel_v", "conv_2/bias",
        "dense/kernel_u", "dense/kernel_v", "dense/bias",
        "actions/kernel", "actions/bias",
    ]  # fmt: skip
    assert [tuple(w.shape) for w in fact.trainable_weights[:3]] == [(768, 4), (4, 32), (32,)]
    assert tuple(fact.get_layer("dense").kernel_u.shape) == (3136, 4)


def test_carracing_structure(models):
    full, fact, small = (models["carracing", v] for v in ("full", "factorized", "small"))
    for model, widths in (
        (full, (32, 64, 128, 256)), (fact, (32, 64, 128, 256)), (small, (4, 4, 8, 16))
    ):  # fmt: skip
        convs = _conv_layers(model)
        assert [c.filters for c in convs] == list(widths)
        assert all(tuple(c.kernel_size) == (4, 4) and tuple(c.strides) == (2, 2) for c in convs)
        assert model.get_layer("flatten").output.shape[-1] == 2 * 2 * widths[-1]
        assert model.get_layer("actions").units == 3
    assert all(isinstance(c, lrl.FactorizedConv2D) and c.rank == 1 for c in _conv_layers(fact))
    assert isinstance(fact.get_layer("dense"), lrl.FactorizedDense)
    assert type(full.get_layer("dense")) is keras.layers.Dense
    assert small.get_layer("dense").units == 32


def test_full_init(models):
    model = models["atari", "full"]
    dense = ops.convert_to_numpy(model.get_layer("dense").kernel)
    assert float(np.std(dense)) == pytest.approx(math.sqrt(2 / 3136), rel=0.05)
    conv = ops.convert_to_numpy(model.get_layer("conv_1").kernel)
    assert float(np.std(conv)) == pytest.approx(math.sqrt(2 / (4 * 4 * 32)), rel=0.05)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            np.testing.assert_array_equal(ops.convert_to_numpy(layer.bias), 0.0)


def test_evolution_info_covers_factors(models):
    model = models["carracing", "factorized"]
    infos = [layer.evolution_info() for layer in model.layers if hasattr(layer, "evolution_info")]
    assert len(infos) == 5  # 4 convs + the hidden dense
    factors = [name for info in infos for name, meta in info.items() if meta["factor"]]
    assert len(factors) == 10
    assert all(meta["init_std"] > 0 for info in infos for meta in info.values())


def test_overrides():
    model = presets.atari_policy(
        "factorized", num_actions=6, rank=2, input_shape=(44, 44, 4), name="tiny"
    )
    assert model.name == "tiny"
    assert model.get_layer("conv_0").rank == 2
    assert tuple(model.get_layer("conv_0").kernel_u.shape) == (8 * 8 * 4, 2)
    assert model.output_shape == (None, 6)
    out = model(np.zeros((1, 44, 44, 4), "float32"))
    assert tuple(out.shape) == (1, 6)
    # `rank` is ignored (not validated) for the unfactorized variants.
    small = presets.carracing_policy("small", rank=0, num_actions=2)
    assert small.count_params() == 5_795 - 33


@pytest.mark.parametrize("builder", list(BUILDERS.values()))
@pytest.mark.parametrize("bad", ["medium", "", None, "Full"])
def test_unknown_variant(builder, bad):
    with pytest.raises(ValueError, match=r"`variant`.*'factorized'.*'full'.*'small'"):
        builder(bad)


@pytest.mark.parametrize("builder", list(BUILDERS.values()))
def test_bad_args(builder):
    with pytest.raises(ValueError, match=r"`rank`.*rank=0"):
        builder("factorized", rank=0)
    with pytest.raises(ValueError, match=r"`num_actions`.*num_actions=1\.5"):
        builder("full", num_actions=1.5)
    for bad in [(84, 84), (84, 84, 0), "84", (84, 84, None)]:
        with pytest.raises(ValueError, match="`input_shape`"):
            builder("small", input_shape=bad)


@pytest.mark.parametrize("variant, count", [("full", 71942), ("factorized", 5194),
                                            ("small", 662)])
def test_control_policy_counts_and_shapes(variant, count):
    model = presets.control_policy(variant, input_dim=17, num_actions=6)
    assert model.count_params() == count
    assert tuple(model(np.zeros((2, 17), "float32")).shape) == (2, 6)


def test_control_policy_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        presets.control_policy("huge")
    with pytest.raises(ValueError, match="input_dim"):
        presets.control_policy(input_dim=0)


def test_control_policy_for_small_observations_warns_not(recwarn):
    # CartPole's 4 numbers with rank 4: a factorization would save nothing, so the first
    # hidden layer is a plain Dense; the second (256 -> 256) is factorized.
    model = presets.control_policy("factorized", input_dim=4, num_actions=2, rank=4)
    assert not [w for w in recwarn if "no factorization" in str(w.message)]
    assert type(model.get_layer("hidden_0")).__name__ == "Dense"
    assert type(model.get_layer("hidden_1")).__name__ == "FactorizedDense"

"""Tests for keras_lrne.layers.FactorizedConv2D."""

import math
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_lrne import layers as lrl


def _np(x):
    return ops.convert_to_numpy(x)


def _weights(layer):
    return [(w.name, tuple(w.shape)) for w in layer.trainable_weights]


def _reference(layer, x):
    """`conv(x, layer.kernel) + bias` with Keras' own convolution."""
    y = ops.conv(
        x, layer.kernel, strides=layer.strides, padding=layer.padding,
        data_format="channels_last",
    )  # fmt: skip
    if layer.bias is not None:
        y = y + layer.bias
    return _np(y)


def test_weights_names_shapes_and_kernel():
    layer = lrl.FactorizedConv2D(6, (3, 2), rank=2)
    layer.build((None, 9, 8, 5))
    assert _weights(layer) == [("kernel_u", (30, 2)), ("kernel_v", (2, 6)), ("bias", (6,))]
    assert layer.non_trainable_weights == []
    u, v = _np(layer.kernel_u), _np(layer.kernel_v)
    expected = (u @ v).reshape(3, 2, 5, 6) / 2.0
    np.testing.assert_allclose(_np(layer.kernel), expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(AttributeError):
        layer.kernel = np.zeros((3, 2, 5, 6))
    with pytest.raises(AttributeError, match="build"):
        _ = lrl.FactorizedConv2D(6, 3, rank=2).kernel


@pytest.mark.parametrize(
    "kernel_size,strides,padding,shape",
    [
        (3, 1, "valid", (2, 9, 9, 4)),
        ((4, 2), (2, 1), "valid", (2, 11, 8, 3)),
        (3, 2, "same", (2, 9, 10, 4)),
        (8, 4, "valid", (1, 20, 20, 3)),
    ],
)
@pytest.mark.parametrize("path", ["materialize", "two_step", "auto"])
def test_paths_match_reference_conv(kernel_size, strides, padding, shape, path):
    keras.utils.set_random_seed(0)
    layer = lrl.FactorizedConv2D(5, kernel_size, rank=2, strides=strides, padding=padding)
    layer._compute_path = path
    rng = np.random.RandomState(0)
    x = rng.randn(*shape).astype("float32")
    layer.build(shape)
    layer.bias.assign(rng.randn(5).astype("float32"))
    y = _np(layer(x))
    assert y.shape == layer.compute_output_shape(shape)
    np.testing.assert_allclose(y, _reference(layer, x), rtol=1e-4, atol=1e-5)
    # Independent reference: numpy cross-correlation with the halved product.
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    if padding == "valid":
        kernel = (_np(layer.kernel_u) @ _np(layer.kernel_v)).reshape(kh, kw, shape[-1], 5) / 2
        oh, ow = y.shape[1:3]
        ref = np.zeros_like(y)
        for i in range(oh):
            for j in range(ow):
                patch = x[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
                ref[:, i, j] = np.einsum("bhwc,hwcf->bf", patch, kernel)
        np.testing.assert_allclose(y, ref + _np(layer.bias), rtol=1e-4, atol=1e-4)


def test_two_paths_agree_with_activation_and_no_bias():
    x = np.random.RandomState(1).randn(3, 7, 7, 2).astype("float32")
    layer = lrl.FactorizedConv2D(4, 3, rank=1, use_bias=False, activation="relu")
    layer._compute_path = "two_step"
    y_two = _np(layer(x))
    layer._compute_path = "materialize"
    y_mat = _np(layer(x))
    assert _weights(layer) == [("kernel_u", (18, 1)), ("kernel_v", (1, 4))]
    np.testing.assert_allclose(y_two, y_mat, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y_two, np.maximum(_reference(layer, x), 0), rtol=1e-5, atol=1e-6)


def test_auto_path_picks_fewer_multiply_adds():
    # Nature-DQN conv 1 at rank 4: the two-step form is ~7x cheaper per frame.
    atari = lrl.FactorizedConv2D(32, 8, rank=4, strides=4)
    atari.build((None, 84, 84, 12))
    materialize, two_step = atari._multiply_adds((None, 84, 84, 12))
    assert two_step == 400 * (768 * 4 + 4 * 32)
    assert materialize == 768 * 4 * 32 + 400 * 768 * 32
    assert atari._use_two_step((8, 84, 84, 12))
    # Rank close to the filter count on a big image: materialising is cheaper.
    wide = lrl.FactorizedConv2D(8, 1, rank=6)
    wide.build((None, 32, 32, 16))
    materialize, two_step = wide._multiply_adds((4, 32, 32, 16))
    assert materialize < two_step
    assert not wide._use_two_step((4, 32, 32, 16))
    wide._compute_path = "bogus"
    with pytest.raises(ValueError, match="_compute_path"):
        wide(np.zeros((1, 4, 4, 16), "float32"))


@pytest.mark.parametrize(
    "kernel_size,strides,padding,shape,expected",
    [
        (8, 4, "valid", (None, 84, 84, 12), (None, 20, 20, 32)),
        (4, 2, "valid", (None, 64, 64, 12), (None, 31, 31, 32)),
        (3, 2, "same", (2, 9, 10, 3), (2, 5, 5, 32)),
        ((3, 1), (1, 2), "valid", (None, None, 7, 3), (None, None, 4, 32)),
    ],
)
def test_compute_output_shape(kernel_size, strides, padding, shape, expected):
    layer = lrl.FactorizedConv2D(32, kernel_size, rank=2, strides=strides, padding=padding)
    assert layer.compute_output_shape(shape) == expected
    if None not in shape[1:]:
        concrete = (2,) + shape[1:]
        assert tuple(layer(np.zeros(concrete, "float32")).shape) == (2,) + expected[1:]


def test_init_variance():
    keras.utils.set_random_seed(0)
    layer = lrl.FactorizedConv2D(256, 3, rank=16)
    layer.build((None, 12, 12, 64))
    fan_in = 3 * 3 * 64
    assert float(np.std(_np(layer.kernel_u))) == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert float(np.std(_np(layer.kernel_v))) == pytest.approx(math.sqrt(2 / 16), rel=0.15)
    # Var(U @ V) = rank * (2/fan_in) * (2/rank) = 4/fan_in, halved kernel: 1/fan_in.
    assert float(np.var(_np(layer.kernel))) == pytest.approx(1.0 / fan_in, rel=0.25)
    assert abs(float(np.mean(_np(layer.kernel)))) < 0.1 / math.sqrt(fan_in)
    np.testing.assert_array_equal(_np(layer.bias), 0.0)


def test_evolution_info():
    layer = lrl.FactorizedConv2D(32, 4, rank=2, strides=2)
    with pytest.raises(ValueError, match="built"):
        layer.evolution_info()
    layer.build((None, 16, 16, 8))
    info = layer.evolution_info()
    assert list(info) == [w.name for w in layer.trainable_weights]
    assert info == {
        "kernel_u": {"init_std": pytest.approx(math.sqrt(2 / 128)), "factor": True},
        "kernel_v": {"init_std": pytest.approx(1.0), "factor": True},
        "bias": {"init_std": pytest.approx(math.sqrt(2 / 32)), "factor": False},
    }
    custom = lrl.FactorizedConv2D(
        8, 3, rank=2, use_bias=False,
        kernel_v_initializer=keras.initializers.RandomNormal(stddev=0.3),
    )  # fmt: skip
    custom.build((None, 5, 5, 2))
    assert custom.evolution_info() == {
        "kernel_u": {"init_std": pytest.approx(math.sqrt(2 / 18)), "factor": True},
        "kernel_v": {"init_std": pytest.approx(0.3), "factor": True},
    }


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_bad_filters_and_rank(bad):
    with pytest.raises(ValueError, match=f"`filters`.*filters={bad!r}"):
        lrl.FactorizedConv2D(bad, 3, rank=2)
    with pytest.raises(ValueError, match=f"`rank`.*rank={bad!r}"):
        lrl.FactorizedConv2D(8, 3, rank=bad)


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, None, (3,), (3, 0), (3, 3, 3), "3"])
def test_bad_kernel_size_and_strides(bad):
    with pytest.raises(ValueError, match=r"`kernel_size`.*kernel_size="):
        lrl.FactorizedConv2D(8, bad, rank=2)
    with pytest.raises(ValueError, match=r"`strides`.*strides="):
        lrl.FactorizedConv2D(8, 3, rank=2, strides=bad)


@pytest.mark.parametrize("bad", ["full", "causal", None, 1])
def test_bad_padding_and_use_bias(bad):
    with pytest.raises(ValueError, match=f"`padding`.*padding={bad!r}"):
        lrl.FactorizedConv2D(8, 3, rank=2, padding=bad)
    with pytest.raises(ValueError, match="`use_bias`"):
        lrl.FactorizedConv2D(8, 3, rank=2, use_bias="yes")


def test_input_validation():
    layer = lrl.FactorizedConv2D(8, 3, rank=2)
    with pytest.raises(ValueError, match="channel"):
        layer.build((None, 8, 8, None))
    layer(np.zeros((1, 5, 5, 3), "float32"))
    with pytest.raises(ValueError):
        layer(np.zeros((1, 5, 5, 4), "float32"))
    with pytest.raises(ValueError):
        layer(np.zeros((5, 5, 3), "float32"))
    padded = lrl.FactorizedConv2D(8, [3, 3], rank=2, strides=[2, 1], padding="SAME")
    assert padded.kernel_size == (3, 3) and padded.strides == (2, 1)
    assert padded.padding == "same"


def test_rank_warning():
    # min(fan_in = 1*1*4, filters = 16) = 4.
    with pytest.warns(UserWarning, match="no factorization"):
        lrl.FactorizedConv2D(16, 1, rank=4).build((None, 5, 5, 4))
    # min(fan_in = 3*3*4, filters = 8) = 8.
    with pytest.warns(UserWarning, match="no factorization"):
        lrl.FactorizedConv2D(8, 3, rank=8).build((None, 5, 5, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrl.FactorizedConv2D(8, 3, rank=7).build((None, 5, 5, 4))


def test_get_config_round_trip():
    layer = lrl.FactorizedConv2D(
        7, (3, 2), rank=3, strides=(2, 1), padding="same", activation="tanh",
        use_bias=False, kernel_v_initializer=keras.initializers.RandomNormal(stddev=0.1),
        name="fc",
    )  # fmt: skip
    config = layer.get_config()
    assert config["kernel_u_initializer"] == "auto"
    assert config["kernel_size"] == (3, 2) and config["strides"] == (2, 1)
    clone = lrl.FactorizedConv2D.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is lrl.FactorizedConv2D
    assert restored.get_config() == config
    layer.build((None, 6, 6, 2))
    clone.build((None, 6, 6, 2))
    assert _weights(clone) == _weights(layer)
    assert keras.saving.get_registered_name(lrl.FactorizedConv2D) == "keras_lrne>FactorizedConv2D"


def _conv_model():
    inputs = keras.Input((9, 9, 3))
    first = lrl.FactorizedConv2D(6, 3, rank=2, strides=2, activation="relu", name="fc0")
    second = lrl.FactorizedConv2D(5, 2, rank=3, padding="same", name="fc1")
    first._compute_path, second._compute_path = "two_step", "materialize"
    x = second(first(inputs))
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.slow
def test_keras_save_load_fresh_process(tmp_path, load_check):

    keras.utils.set_random_seed(3)
    model = _conv_model()
    x = np.random.RandomState(3).rand(2, 9, 9, 3).astype("float32")
    load_check(model, x, tmp_path)


def test_compiled_population_map():
    """A stacked population through `stateless_call`, vmapped and compiled."""
    keras.utils.set_random_seed(4)
    model = _conv_model()
    rng = np.random.RandomState(4)
    population = [
        np.stack([rng.randn(*v.shape).astype("float32") * 0.5 for _ in range(3)])
        for v in model.trainable_variables
    ]
    x = rng.rand(2, 9, 9, 3).astype("float32")

    def member(weights):
        y, _ = model.stateless_call(list(weights), model.non_trainable_variables, x)
        return y

    expected = np.stack(
        [_np(member([p[i] for p in population])) for i in range(3)]
    )  # fmt: skip
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda pop: tf.vectorized_map(member, pop), jit_compile=True)
        got = fn([tf.constant(p) for p in population])
    elif keras.config.backend() == "jax":
        import jax

        got = jax.jit(jax.vmap(member))(population)
    else:
        pytest.skip("population map is only tested on TensorFlow and JAX")
    assert tuple(got.shape) == (3, 2, 2)
    np.testing.assert_allclose(_np(got), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kernel_size,strides,padding,shape",
    [
        (8, 4, "valid", (2, 84, 84, 3)),  # the paper's Atari conv: kernel = 2 x stride
        (4, 2, "valid", (1, 20, 21, 5)),
        (3, 1, "valid", (2, 9, 7, 4)),
        (3, 2, "valid", (2, 10, 11, 2)),  # kernel not a multiple of the stride
        (2, 3, "valid", (1, 13, 13, 2)),  # kernel smaller than the stride
        ((5, 2), (3, 1), "same", (2, 7, 9, 2)),
        (3, 2, "same", (1, 10, 11, 3)),
        (1, 1, "same", (2, 4, 4, 3)),
        (4, 2, "valid", (1, 4, 4, 2)),  # a single output position
    ],
)
def test_conv2d_by_matmul_matches_conv(kernel_size, strides, padding, shape):
    from keras_lrne.layers import _vectorized

    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    sh, sw = (strides, strides) if isinstance(strides, int) else strides
    rng = np.random.RandomState(7)
    x = rng.randn(*shape).astype("float32")
    kernel = rng.randn(kh, kw, shape[-1], 3).astype("float32")
    expected = _np(ops.conv(x, kernel, strides=(sh, sw), padding=padding))
    got = _np(_vectorized.conv2d_by_matmul(ops.convert_to_tensor(x),
                                           ops.convert_to_tensor(kernel), (sh, sw), padding))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture
def matmul_calls(monkeypatch):
    """Records the `(strides, padding)` of every `conv2d_by_matmul` call."""
    from keras_lrne.layers import _vectorized

    calls = []
    original = _vectorized.conv2d_by_matmul

    def spy(*args):
        calls.append(args[2:])
        return original(*args)

    monkeypatch.setattr(_vectorized, "conv2d_by_matmul", spy)
    return calls


def test_member_calls_context_selects_the_matmul_form(matmul_calls):
    from keras_lrne.layers import _vectorized

    calls = matmul_calls
    keras.utils.set_random_seed(0)
    x = np.random.RandomState(0).randn(2, 11, 10, 3).astype("float32")
    for path in ("two_step", "materialize"):
        layer = lrl.FactorizedConv2D(5, 3, rank=2, strides=2, padding="same",
                                     activation="relu", bias_initializer="ones")
        layer._compute_path = path
        plain = _np(layer(x))
        assert not calls and not _vectorized.in_member_calls()
        with _vectorized.member_calls():
            assert _vectorized.in_member_calls()
            member = _np(layer(x))
        assert calls == [((2, 2), "same")]
        calls.clear()
        np.testing.assert_allclose(member, plain, rtol=1e-4, atol=1e-5)
    assert not _vectorized.in_member_calls()
    with pytest.raises(RuntimeError), _vectorized.member_calls():
        raise RuntimeError("left by an exception")
    assert not _vectorized.in_member_calls()


@pytest.mark.parametrize("task_kind", ["supervised", "rollout"])
def test_evolution_traces_the_vectorised_form(matmul_calls, task_kind):
    """Both population engines (data batches and environment rollouts) trace
    FactorizedConv2D in its vectorising form, and the results equal plain calls."""
    import keras_lrne

    calls = matmul_calls
    keras.utils.set_random_seed(1)
    if task_kind == "rollout":
        task = keras_lrne.tasks.Atari("Pong", max_episode_steps=10, num_envs=4)
        model = keras_lrne.presets.atari_policy("factorized", num_actions=task.num_outputs)
        model.evolve(task, strategy=keras_lrne.strategies.GA(4, 2), generations=1, verbose=0)
        assert len(calls) >= 3  # the net's three convolutions, once per traced bucket
        return
    model = keras_lrne.Sequential([
        keras.Input((9, 9, 3)),
        lrl.FactorizedConv2D(4, 3, rank=2, strides=2, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])
    model.compile(loss="mse")
    rng = np.random.RandomState(1)
    x, y = rng.rand(8, 9, 9, 3).astype("float32"), rng.rand(8, 2).astype("float32")
    history = model.evolve(x, y, strategy=keras_lrne.strategies.GA(4, 2), generations=1,
                           batch_size=8, seed=0, verbose=0)
    assert calls
    # The elite's reported loss is what a plain (ops.conv) call of the elite gives.
    plain = float(np.mean((_np(model(x)) - y) ** 2))
    np.testing.assert_allclose(history.history["loss"][-1], plain, rtol=1e-4)

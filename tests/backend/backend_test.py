"""Tests for the backend function set (keras_lrne.backend)."""

import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from keras_lrne import backend


def test_compile_fixed_matches_compile_and_reuses_one_trace():
    bk = backend.get()
    traces = []

    def fn(weights, x):
        traces.append(1)
        return ops.matmul(x, weights[0]) + weights[1]

    # Two function objects: JAX shares one trace cache per function.
    fixed, plain = bk.compile_fixed(lambda *a: fn(*a)), bk.compile(lambda *a: fn(*a))
    rng = np.random.RandomState(0)
    weights = [rng.randn(3, 2).astype("float32"), rng.randn(2).astype("float32")]
    for seed in range(3):
        x = np.random.RandomState(seed).randn(4, 3).astype("float32")
        np.testing.assert_allclose(bk.to_numpy(fixed(weights, x)),
                                   bk.to_numpy(plain(weights, x)), rtol=1e-6)
        np.testing.assert_allclose(bk.to_numpy(fixed(weights, x)),
                                   x @ weights[0] + weights[1], rtol=1e-5, atol=1e-6)
    assert len(traces) == 2  # one trace each, whatever the number of calls


def test_seeded_normal_rows_depend_only_on_their_seed_and_salt():
    bk = backend.get()
    draw = bk.compile_random(lambda seeds: bk.seeded_normal(seeds, 0, (1000,), "float32"))
    batch = bk.to_numpy(draw(np.asarray([5, 9, 5, 123], np.int32)))
    alone = bk.to_numpy(draw(np.asarray([9], np.int32)))
    assert batch.shape == (4, 1000)
    np.testing.assert_array_equal(batch[1], alone[0])
    np.testing.assert_array_equal(batch[0], batch[2])
    assert not np.allclose(batch[0], batch[1])
    assert abs(batch.mean()) < 0.1 and abs(batch.std() - 1) < 0.05
    salted = bk.to_numpy(bk.seeded_normal(np.asarray([5], np.int32), 1, (1000,), "float32"))
    assert not np.allclose(salted[0], batch[0])


def test_map_chunks_maps_in_order_and_matches_a_direct_map():
    bk = backend.get()
    stacked = [np.arange(24, dtype="float32").reshape(4, 3, 2),
               np.ones((4, 3), "float32")]
    fn = bk.compile(lambda a, b: bk.map_chunks(
        lambda chunk: ops.sum(chunk[0], axis=-1) * chunk[1], [a, b], (3,)))
    expected = stacked[0].sum(-1) * stacked[1]
    np.testing.assert_allclose(bk.to_numpy(fn(*stacked)), expected)


_SIX_RUNS = """
import logging
import keras, numpy as np, keras_lrne
from keras_lrne.strategies import GA, OpenES

messages = []
handler = logging.Handler()
handler.emit = lambda record: messages.append(record.getMessage())
logging.getLogger("tensorflow").addHandler(handler)
x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
for run in range(6):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    strategy = GA(4, 1) if run % 2 else OpenES(4, sigma=0.1, learning_rate=0.1)
    keras_lrne.evolve(model, x, x[:, :1], strategy=strategy, generations=2, seed=run,
                      verbose=0)
print("TRACING WARNINGS", sum("retracing" in m for m in messages))
"""


@pytest.mark.slow
@pytest.mark.skipif(keras.config.backend() != "tensorflow",
                    reason="TensorFlow's tf.function retracing warning")
def test_many_runs_in_one_process_do_not_warn_about_retracing():
    # In a fresh process: TensorFlow warns at most twice per function it counts, so
    # earlier tests in this process could have used the warnings up.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    result = subprocess.run([sys.executable, "-c", _SIX_RUNS], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "TRACING WARNINGS 0" in result.stdout, result.stdout + result.stderr[-4000:]
    assert "retracing" not in result.stderr


def test_quiet_vectorization_drops_only_the_bitcast_fallback_notice(caplog):
    bk = backend.get()
    logger = logging.getLogger("tensorflow")
    bitcast = "Using a while_loop for converting Bitcast cause there is no registered converter"
    other = "Using a while_loop for converting Foo cause there is no registered converter"
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        with bk.quiet_vectorization():
            logger.warning(bitcast)
            logger.warning(other)
        logger.warning(bitcast)  # outside the context: shown
    messages = [r.getMessage() for r in caplog.records]
    dropped = keras.config.backend() == "tensorflow"  # nothing to drop on JAX
    assert messages == ([other, bitcast] if dropped else [bitcast, other, bitcast])

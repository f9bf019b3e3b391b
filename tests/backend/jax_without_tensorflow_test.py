"""On the JAX backend keras-lrne never imports TensorFlow for arrays, environments and
saved files (TensorFlow is blocked by an import hook in a subprocess)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

pytestmark = pytest.mark.skipif(keras.config.backend() != "jax",
                                reason="a JAX-backend check (runs in the JAX pass)")

BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "tf_keras"):
                raise ImportError(f"TensorFlow is blocked in this test: {name}")

    sys.meta_path.insert(0, BlockTensorFlow())
    """
)

RUN = textwrap.dedent(
    """
    import os, sys
    import numpy as np, keras, keras_lrne

    out = sys.argv[1]
    vocab, length = 64, 16
    model = keras_lrne.presets.language_model("factorized", vocab_size=vocab,
                                              sequence_length=length)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.integers(1, vocab, size=(8, length)).astype("int32")
    y = np.roll(x, -1, axis=1)
    history = model.evolve(x, y, strategy=keras_lrne.strategies.GA(6, 2), generations=2,
                           seed=0, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    # (Keras' own `save` / `get_config` import TensorFlow when it is installed.)
    print("TENSORFLOW IMPORTED" if "tensorflow" in sys.modules else "NO TENSORFLOW")
    model.lineage.save(os.path.join(out, "lineage.npz"))
    model.save(os.path.join(out, "model.keras"))
    again = keras.saving.load_model(os.path.join(out, "model.keras"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(x[:2])),
                               keras.ops.convert_to_numpy(model(x[:2])), rtol=1e-5, atol=1e-5)
    member = keras_lrne.Lineage.load(os.path.join(out, "lineage.npz")).rebuild_member(
        again, 2, 0, assign=False)
    for a, b in zip(member, model.rebuild_member(2, 0)):
        np.testing.assert_array_equal(a, b)
    task = keras_lrne.tasks.Environment("CartPole-v1", max_episode_steps=10)
    policy = keras_lrne.Sequential([keras.Input(task.input_shape), keras.layers.Dense(2)])
    policy.evolve(task, strategy=keras_lrne.strategies.OpenES(4), generations=1, seed=0,
                  verbose=0)
    print("DONE")
    """
)


def _run(script, tmp_path):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_arrays_environments_and_files_run_with_tensorflow_blocked(tmp_path):
    result = _run(BLOCK + RUN, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "NO TENSORFLOW" in result.stdout and "DONE" in result.stdout
    assert (tmp_path / "lineage.npz").is_file() and (tmp_path / "model.keras").is_file()


@pytest.mark.slow
def test_an_array_run_leaves_tensorflow_unimported(tmp_path):
    result = _run(RUN, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "NO TENSORFLOW" in result.stdout and "DONE" in result.stdout


def test_text_tasks_name_tensorflow_when_it_is_missing(tmp_path):
    script = BLOCK + textwrap.dedent(
        """
        import keras_lrne
        try:
            keras_lrne.tasks.LanguageModeling(tokenizer="character", sequence_length=8,
                                              num_sequences=4)
        except ImportError as error:
            print("ERROR:", error)
        """
    )
    result = _run(script, tmp_path)
    assert "LanguageModeling needs TensorFlow" in result.stdout, result.stderr[-2000:]


def test_tensorflow_imported_on_jax_is_kept_off_the_gpus(monkeypatch):
    import tensorflow as tf

    from keras_lrne._tf import import_tensorflow

    calls = []
    monkeypatch.setattr(tf.config, "set_visible_devices",
                        lambda devices, kind=None: calls.append((list(devices), kind)))
    assert import_tensorflow("a test") is tf
    assert calls == [([], "GPU")]


@pytest.mark.slow
def test_the_device_check_runs_with_tensorflow_blocked(tmp_path):
    # As on the accelerator machine: TensorFlow is absent in the check and in every
    # measurement's subprocess (a sitecustomize blocks it in all of them).
    (tmp_path / "sitecustomize.py").write_text(BLOCK)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(tmp_path), root,
                                           os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "device_check.py"), "--tiny",
         "--only", "paper_lm"], env=env, capture_output=True, text=True, timeout=600,
        check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["check"] for line in lines] == ["device", "paper_lm"]
    assert lines[0]["backend"] == "jax" and not lines[0]["tensorflow_imported"]
    check = lines[1]
    assert check["rc"] == 0 and not check["timed_out"], check.get("output_tail")
    assert check["result"]["tensorflow_imported"] is False
    assert check["result"]["seconds_per_generation"] > 0
    assert check["result"]["population"] == 8

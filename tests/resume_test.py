import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne import checkpoint
from keras_lrne.strategies import GA

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, json
    import numpy as np, keras, keras_lrne
    from keras_lrne import layers as lrl

    backup, kill_at, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input((6,)), lrl.FactorizedDense(8, rank=2,
        activation="relu"), keras.layers.Dense(1)])
    model.compile(loss="mse")

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    callbacks = [keras.callbacks.BackupAndRestore(backup), Kill()] if backup != "-" else []
    history = model.evolve(x, y, strategy=keras_lrne.strategies.GA(12, 3, mutation_rate=0.1),
                           generations=6, seed=5, verbose=0, callbacks=callbacks)
    weights = [w.tolist() for w in model.get_weights()]
    json.dump({"history": history.history, "epoch": history.epoch, "weights": weights},
              open(out, "w"))
    """
)


def _run(tmp_path, backup, kill_at, name):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(script), backup, str(kill_at), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    return proc, out


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    import json

    backup = str(tmp_path / "backup")
    killed, _ = _run(tmp_path, backup, 2, "killed")
    assert killed.returncode == -9  # SIGKILL mid-run
    assert os.path.exists(os.path.join(backup, checkpoint.STATE_FILE))
    resumed, resumed_out = _run(tmp_path, backup, -1, "resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight, straight_out = _run(tmp_path, "-", -1, "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    a, b = json.loads(resumed_out.read_text()), json.loads(straight_out.read_text())
    assert a["epoch"] == b["epoch"] == list(range(6))
    for key in ("loss", "mean_loss", "median_loss"):
        np.testing.assert_allclose(a["history"][key], b["history"][key], rtol=0, atol=0)
    for wa, wb in zip(a["weights"], b["weights"]):
        np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb))
    assert not os.path.exists(backup)  # BackupAndRestore cleans up after a finished run


def small_run(tmp_path, strategy=None, callbacks=(), generations=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model.evolve(x, y, strategy=strategy or GA(8, 2), generations=generations, seed=1,
                        verbose=0, callbacks=list(callbacks))


class Stop(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("power cut")


def test_interrupted_run_resumes_from_the_last_generation(tmp_path):
    backup = tmp_path / "b"
    with pytest.raises(RuntimeError, match="power cut"):
        small_run(tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(backup)), Stop()],
                  generations=4)
    resumed = small_run(tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(backup))],
                        generations=4)
    straight = small_run(tmp_path, generations=4)
    assert resumed.epoch == [0, 1, 2, 3]
    assert resumed.history["loss"] == straight.history["loss"]


def test_corrupted_checkpoint_is_reported_and_left_alone(tmp_path):
    backup = tmp_path / "b"
    with pytest.raises(RuntimeError):
        small_run(tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(backup)), Stop()])
    path = backup / checkpoint.STATE_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted"):
        small_run(tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(backup))])
    assert path.read_bytes() == data[: len(data) // 2]


def test_resuming_with_different_settings_names_them(tmp_path):
    backup = tmp_path / "b"
    with pytest.raises(RuntimeError):
        small_run(tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(backup)), Stop()])
    with pytest.raises(ValueError, match="strategy"):
        small_run(tmp_path, strategy=GA(10, 2),
                  callbacks=[keras.callbacks.BackupAndRestore(str(backup))])


def test_unwritable_backup_dir_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="backup_dir"):
        small_run(tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(blocker / "b"))])


def control_run(callbacks=(), generations=3):
    """A tiny RL run whose task state (the running observation normaliser) must resume."""
    task = keras_lrne.tasks.Control("Pendulum-v1", max_episode_steps=15)
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input(task.input_shape),
                                   keras.layers.Dense(task.num_outputs)])
    history = model.evolve(task, strategy=GA(6, 2), generations=generations, seed=2,
                           verbose=0, callbacks=list(callbacks))
    return history, task, model


def test_rl_run_resumes_with_its_observation_normaliser(tmp_path):
    backup = str(tmp_path / "b")
    with pytest.raises(RuntimeError, match="power cut"):
        control_run([keras.callbacks.BackupAndRestore(backup), Stop()])
    resumed, resumed_task, resumed_model = control_run(
        [keras.callbacks.BackupAndRestore(backup)])
    straight, straight_task, straight_model = control_run()
    assert resumed.epoch == [0, 1, 2]
    for key in ("episode_return", "mean_return", "loss"):
        assert resumed.history[key] == straight.history[key], key
    a, b = resumed_task.normalizer, straight_task.normalizer
    assert a.count == b.count > 0
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.var, b.var)
    for wa, wb in zip(resumed_model.get_weights(), straight_model.get_weights()):
        np.testing.assert_array_equal(wa, wb)

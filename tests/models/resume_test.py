import json
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


def _interrupted(tmp_path, **kwargs):
    """A backup directory holding the checkpoint of a run stopped after generation 1."""
    backup = tmp_path / "b"
    with pytest.raises(RuntimeError, match="power cut"):
        small_run(tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(backup)), Stop()],
                  **kwargs)
    return backup


def test_torn_or_missing_keras_backup_files_never_block_a_resume(tmp_path):
    backup = _interrupted(tmp_path, generations=4)
    # evolve() writes no Keras backup files (its own checkpoint is the source of truth)...
    assert sorted(p.name for p in backup.iterdir()) == sorted([checkpoint.LOCK_FILE,
                                                                checkpoint.STATE_FILE])
    # ...and never reads those a crash of another tool may have torn.
    (backup / "latest.weights.h5").write_bytes(b"\x89HDF\r\n torn")
    (backup / "training_metadata.json").write_text('{"epoch": ')
    resumed = small_run(tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(backup))],
                        generations=4)
    assert resumed.epoch == [0, 1, 2, 3]
    assert resumed.history["loss"] == small_run(tmp_path, generations=4).history["loss"]


def test_resume_rewrites_the_csv_log_with_every_generation_once(tmp_path):
    backup = _interrupted(tmp_path, generations=4)
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss\n0,1.0\n0,1.0\n1,")  # a duplicated row and a torn one
    resumed = small_run(tmp_path, generations=4, callbacks=[
        keras.callbacks.BackupAndRestore(str(backup)),
        keras.callbacks.CSVLogger(str(log), append=True)])
    straight_log = tmp_path / "straight.csv"
    small_run(tmp_path, generations=4, callbacks=[keras.callbacks.CSVLogger(str(straight_log))])
    import csv

    rows = list(csv.DictReader(log.open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    straight = list(csv.DictReader(straight_log.open()))
    timing = {"member_evals_per_second", "generation_seconds"}
    assert ([{k: v for k, v in r.items() if k not in timing} for r in rows]
            == [{k: v for k, v in r.items() if k not in timing} for r in straight])
    assert [float(r["loss"]) for r in rows] == resumed.history["loss"]


def test_save_freq_and_delete_checkpoint_are_honoured(tmp_path):
    backup = tmp_path / "b"
    saved = []
    original = checkpoint.save

    def spy(path, arrays, meta):
        saved.append(meta["state"]["scalars"]["generation"])
        return original(path, arrays, meta)

    checkpoint.save = spy
    try:
        small_run(tmp_path, generations=5, callbacks=[keras.callbacks.BackupAndRestore(
            str(backup), save_freq=2, delete_checkpoint=False)])
    finally:
        checkpoint.save = original
    assert saved == [2, 4, 5]  # every 2 generations, and the end of the run
    assert (backup / checkpoint.STATE_FILE).is_file()  # kept: delete_checkpoint=False
    # Resuming a finished run runs nothing more and returns the whole History.
    again = small_run(tmp_path, generations=5, callbacks=[
        keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)])
    assert again.epoch == [0, 1, 2, 3, 4]


def test_a_run_stopped_by_a_callback_stays_stopped_on_resume(tmp_path):
    class StopAt1(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch == 1

    backup = str(tmp_path / "b")
    first = small_run(tmp_path, generations=5, callbacks=[
        keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False), StopAt1()])
    assert first.epoch == [0, 1]
    again = small_run(tmp_path, generations=5, callbacks=[
        keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)])
    assert again.epoch == [0, 1] and again.history["loss"] == first.history["loss"]


def test_checkpoint_path_replaced_by_a_directory_is_reported(tmp_path):
    backup = tmp_path / "b"
    (backup / checkpoint.STATE_FILE).mkdir(parents=True)
    with pytest.raises(ValueError, match="is a directory"):
        small_run(tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(backup))])


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from keras_lrne.checkpoint import BackupLock
    BackupLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


@pytest.mark.slow
def test_a_second_process_on_one_backup_directory_gets_a_clear_error(tmp_path):
    backup = tmp_path / "b"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(backup)],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(checkpoint.BackupInUseError) as info:
            small_run(tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(backup))])
        message = str(info.value)
        assert str(backup) in message and f"process {holder.pid}" in message
    finally:
        holder.kill()
        holder.wait()
    # The operating system releases the lock of a killed process: the run goes ahead.
    small_run(tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(backup))])


def test_the_lock_is_released_when_evolve_fails(tmp_path):
    backup = _interrupted(tmp_path)
    with pytest.raises(ValueError, match="strategy"):
        small_run(tmp_path, strategy=GA(10, 2),
                  callbacks=[keras.callbacks.BackupAndRestore(str(backup))])
    assert not checkpoint._HELD  # nothing stays locked in this process


@pytest.mark.backend_independent
def test_a_second_run_in_another_thread_is_refused_naming_the_directory(tmp_path):
    import threading

    backup = tmp_path / "b"
    entered, release = threading.Event(), threading.Event()

    class Pause(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                entered.set()
                release.wait(60)

    box = {}

    def first():
        try:
            box["history"] = small_run(tmp_path, generations=3, callbacks=[
                keras.callbacks.BackupAndRestore(str(backup)), Pause()])
        except BaseException as error:
            box["error"] = error

    thread = threading.Thread(target=first, name="first-run")
    thread.start()
    try:
        assert entered.wait(120)
        with pytest.raises(checkpoint.BackupInUseError) as info:
            small_run(tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(backup))])
        assert str(backup) in str(info.value) and "thread 'first-run'" in str(info.value)
    finally:
        release.set()
        thread.join(120)
    assert "error" not in box, box.get("error")
    # The first run was not disturbed: it ends as an uninterrupted run does.
    assert box["history"].history["loss"] == small_run(tmp_path).history["loss"]
    assert not checkpoint._HELD


def test_a_resumed_csv_log_is_byte_identical_to_an_uninterrupted_one(tmp_path):
    # Integer logs (env_steps, failed_members) went through the checkpoint as `90` and
    # `0` and came back written so, where an uninterrupted run writes `90.0` and `0.0`.
    backup, log, straight_log = (str(tmp_path / n) for n in ("b", "log.csv", "straight.csv"))
    with pytest.raises(RuntimeError, match="power cut"):
        control_run([keras.callbacks.BackupAndRestore(backup),
                     keras.callbacks.CSVLogger(log), Stop()], generations=4)
    resumed, _, _ = control_run([keras.callbacks.BackupAndRestore(backup),
                                 keras.callbacks.CSVLogger(log, append=True)], generations=4)
    straight, _, _ = control_run([keras.callbacks.CSVLogger(straight_log)], generations=4)

    def text(path):  # the file as written, its timing cells blanked
        with open(path, newline="") as f:
            lines = f.read().split("\r\n")
        header = lines[0].split(",")
        timing = {i for i, key in enumerate(header) if key in TIMING}
        return [",".join("" if i in timing else cell for i, cell in enumerate(line.split(",")))
                for line in lines]

    assert {"failed_members", "env_steps"} <= set(text(log)[0].split(","))
    assert len(text(log)) == 6  # a header, 4 rows, the final line break
    assert text(log) == text(straight_log)
    # The History holds the same values of the same types.
    for key in straight.history:
        if key not in TIMING:
            assert resumed.history[key] == straight.history[key], key
            assert ([type(v) for v in resumed.history[key]]
                    == [type(v) for v in straight.history[key]]), key


# Columns measured in seconds (or from them): they differ between any two runs.
TIMING = {"generation_seconds", "member_evals_per_second", "first_stage_seconds",
          "frames_per_second", "policy_share", "member_tokens_per_second"}


def _settings_run(tmp_path, backup, x=None, y=None, activation=None, loss="mse"):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32") if x is None else x
    y = x.sum(axis=1, keepdims=True) if y is None else y
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input((4,)), keras.layers.Dense(1,
                                                                         activation=activation)])
    model.compile(loss=loss)
    callbacks = [keras.callbacks.BackupAndRestore(str(backup))]
    if backup.name == "stopped":
        callbacks.append(Stop())
    return model.evolve(x, y, strategy=GA(8, 2), generations=3, seed=1, verbose=0,
                        callbacks=callbacks)


@pytest.mark.parametrize("change, names", [
    ("x_late", "task.x"),       # a change past the first MiB of x
    ("y", "task.y"),
    ("activation", "model"),
    ("loss", "loss"),
])
def test_resume_refuses_other_data_model_or_loss(tmp_path, change, names):
    rng = np.random.default_rng(0)
    big = rng.normal(size=(70_000, 4)).astype("float32")  # 1.1 MB
    backup = tmp_path / "stopped"
    with pytest.raises(RuntimeError, match="power cut"):
        _settings_run(tmp_path, backup, x=big)
    kwargs = {"x": big.copy()}
    if change == "x_late":
        kwargs["x"][-1, -1] += 1.0
    elif change == "y":
        kwargs["y"] = big.sum(axis=1, keepdims=True) + 1.0
    elif change == "activation":
        kwargs["activation"] = "relu"
    else:
        kwargs["loss"] = "mae"
    backup.rename(tmp_path / "b")
    with pytest.raises(ValueError, match="differ") as info:
        _settings_run(tmp_path, tmp_path / "b", **kwargs)
    assert names in str(info.value)
    # The same data and model resume.
    _settings_run(tmp_path, tmp_path / "b", x=big.copy())


def test_resume_refuses_other_documents_and_env_settings(tmp_path):
    def lm(docs, backup, stop=False):
        task = keras_lrne.tasks.LanguageModeling(docs, sequence_length=4, num_sequences=2,
                                                 vocab_size=16)
        keras.utils.set_random_seed(0)
        model = keras_lrne.Sequential([keras.Input((4,), dtype="int32"),
                                       keras.layers.Embedding(task.vocab_size, 4),
                                       keras.layers.Dense(task.vocab_size)])
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        callbacks = [keras.callbacks.BackupAndRestore(str(backup))] + ([Stop()] if stop else [])
        return model.evolve(task, strategy=GA(4, 1), generations=3, seed=0, verbose=0,
                            callbacks=callbacks)

    docs = ["the cat sat on the mat and the dog ran " * 3] * 4
    with pytest.raises(RuntimeError, match="power cut"):
        lm(docs, tmp_path / "lm", stop=True)
    other = docs[:3] + ["the dog sat on the mat and the cat ran " * 3]
    with pytest.raises(ValueError, match=r"task\.tokens"):
        lm(other, tmp_path / "lm")

    def control(backup, stop=False, **kwargs):
        task = keras_lrne.tasks.Control("Pendulum-v1", **{"max_episode_steps": 5, **kwargs})
        keras.utils.set_random_seed(0)
        model = keras_lrne.Sequential([keras.Input(task.input_shape),
                                       keras.layers.Dense(task.num_outputs)])
        callbacks = [keras.callbacks.BackupAndRestore(str(backup))] + ([Stop()] if stop else [])
        return model.evolve(task, strategy=GA(4, 1), generations=3, seed=0, verbose=0,
                            callbacks=callbacks)

    with pytest.raises(RuntimeError, match="power cut"):
        control(tmp_path / "env", stop=True)
    with pytest.raises(ValueError, match="max_episode_steps: checkpoint 5 vs now 6"):
        control(tmp_path / "env", max_episode_steps=6)
    with pytest.raises(ValueError, match="normalize_observations"):
        control(tmp_path / "env", normalize_observations=False)


SOAK = textwrap.dedent(
    """
    import json, os, sys
    import keras, numpy as np
    import keras_lrne
    from keras_lrne.strategies import GA

    def rss_mib():  # the current resident set size (Linux)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    samples = {}

    class Measure(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch in (100, 399):
                samples[epoch] = rss_mib()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    model = keras_lrne.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    model.evolve(x, x.sum(axis=1, keepdims=True), strategy=GA(8, 2), generations=400, seed=0,
                 verbose=0, callbacks=[keras.callbacks.BackupAndRestore(sys.argv[1]),
                                       Measure()])
    print("SAMPLES", json.dumps(samples))
    """
)


@pytest.mark.slow
def test_memory_stays_flat_over_hundreds_of_backed_up_generations(tmp_path):
    # In a fresh process: the resident set of a process that ran other tests before
    # moves with their garbage, not with this run's.
    env = dict(os.environ, KERAS_BACKEND=keras.config.backend(), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", SOAK, str(tmp_path / "b")], env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("SAMPLES "))
    samples = {int(k): v for k, v in json.loads(line.split(" ", 1)[1]).items()}
    assert samples[399] - samples[100] < 8, samples  # before: +17.1 MiB (Keras h5 saves)

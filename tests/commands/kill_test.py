"""SIGKILL at random moments, then resume: every run ends as if it had never been killed.

One fresh process per attempt (forked from a server that imported Keras once). Kills
land at chosen points of a run (inside a checkpoint write, between the checkpoint and the
CSV row, inside each final output write, between the summary and the backup's removal)
and at random times; each killed run is continued with `--resume` (CLI) or the same
`BackupAndRestore` (Python API) until it completes. The continued run's history.csv,
lineage.npz and summary.json must equal an uninterrupted run's (timing columns aside).
"""

import csv
import json
import signal
import textwrap
import time
import zipfile

import keras
import numpy as np
import pytest
from _helpers import forked

from keras_lrne.commands import run_directory

pytestmark = pytest.mark.slow

# Faults are injected by wrapping library functions in the child process (never in the
# library itself): the N-th call of a point kills the process at that point.
HARNESS = textwrap.dedent(
    """
    import json, os, shutil, signal, sys
    point, count = json.loads(os.environ.get("LRNE_KILL_AT") or '["", 0]')
    calls = {"n": 0}

    def hit(name):
        if name == point:
            calls["n"] += 1
            if calls["n"] == count:
                os.kill(os.getpid(), signal.SIGKILL)

    import keras
    from keras_lrne import checkpoint

    atomic_write = checkpoint.atomic_write
    def patched_write(path, data):
        name = os.path.basename(path)
        if name == checkpoint.STATE_FILE:
            if point == "torn_checkpoint" and calls["n"] + 1 == count:
                with open(f"{path}.tmp-{os.getpid()}", "wb") as f:  # half written
                    f.write(data[: len(data) // 2])
            hit("torn_checkpoint")
        hit("write:" + name)
        return atomic_write(path, data)
    checkpoint.atomic_write = patched_write

    replace = os.replace
    def patched_replace(src, dst):
        hit("replace")
        return replace(src, dst)
    os.replace = patched_replace

    on_epoch_end = keras.callbacks.CSVLogger.on_epoch_end
    def patched_row(self, epoch, logs=None):
        hit("csv_row")
        return on_epoch_end(self, epoch, logs)
    keras.callbacks.CSVLogger.on_epoch_end = patched_row

    save = keras.Model.save
    def patched_save(self, *args, **kwargs):
        result = save(self, *args, **kwargs)
        hit("model_save")  # written under its temporary name, not yet renamed
        return result
    keras.Model.save = patched_save

    export = keras.Model.export
    def patched_export(self, *args, **kwargs):
        hit("export_begin")
        return export(self, *args, **kwargs)
    keras.Model.export = patched_export

    rmtree = shutil.rmtree
    def patched_rmtree(path, *args, **kwargs):
        hit("rmtree:" + os.path.basename(os.path.normpath(os.fspath(path))))
        return rmtree(path, *args, **kwargs)
    shutil.rmtree = patched_rmtree

    mode = sys.argv[1]
    if mode == "cli":
        from keras_lrne import cli
        sys.exit(cli.main(sys.argv[2:]))

    # The Python API: BackupAndRestore + CSVLogger, then the History and weights as JSON.
    import numpy as np
    import keras_lrne
    from keras_lrne import layers as lrl
    backup, out = sys.argv[2], sys.argv[3]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input((6,)), lrl.FactorizedDense(8, rank=2,
        activation="relu"), keras.layers.Dense(1)])
    model.compile(loss="mse")
    # Append when resuming; a random kill can land after training ended (the backup is
    # then removed), and the rerun is a fresh run that writes the file anew.
    callbacks = [keras.callbacks.CSVLogger(out + ".csv", append=os.path.isdir(backup))]
    if backup != "-":
        callbacks.insert(0, keras.callbacks.BackupAndRestore(backup))
    history = model.evolve(x, y, strategy=keras_lrne.strategies.GA(12, 3, mutation_rate=0.1),
                           generations=6, seed=5, verbose=0, callbacks=callbacks)
    json.dump({"history": history.history, "epoch": history.epoch,
               "weights": [w.tolist() for w in model.get_weights()]}, open(out, "w"))
    """
)

TIMING = {"generation_seconds", "member_evals_per_second", "member_tokens_per_second",
          "wall_seconds", "evolution_seconds", "first_stage_seconds"}

LM = ["lm", "--population", "4", "--parents", "1", "--generations", "5",
      "--sequence-length", "8", "--num-sequences", "4", "--vocab-size", "64", "--verbose", "0"]

# (point, N): the N-th time the point is reached, the process is SIGKILLed there; every
# point must be reached. "random": a kill at a random moment, which may come after the
# process finished. The random kills run as a chain of their own from a fresh run, so
# that one landing late can never keep a later point from being reached.
CLI_KILLS = [
    ("torn_checkpoint", 2),   # inside the second generation's checkpoint write
    ("csv_row", 2),           # after a generation's checkpoint, before its CSV row
    ("replace", 2),           # before an atomic rename (checkpoint or CSV rewrite)
    ("model_save", 1),        # model.keras written under its temporary name
    ("export_begin", 1),      # during the SavedModel export
    ("write:lineage.npz", 1),
    ("write:summary.json", 1),
    ("rmtree:backup", 1),     # summary written, backup not yet removed
]
RANDOM_KILLS = [("random", None), ("random", None)]


def _run(harness, args, kill=None, delay=None):
    """Runs the harness in a fresh process forked from one that imported Keras (see
    tests/_helpers/forked.py); a float `delay` SIGKILLs it after that many seconds."""
    done = forked.run(harness, args, env={"LRNE_KILL_AT": json.dumps(kill) if kill else ""},
                      kill_after=delay)
    return done.returncode, done.stdout, done.stderr


def _rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _summary(path):
    data = json.loads(path.read_text())
    data["summary"] = {k: v for k, v in data["summary"].items() if k not in TIMING}
    del data["args"]["output"]  # the two runs write to two directories
    return data


@pytest.fixture
def harness(tmp_path):
    path = tmp_path / "harness.py"
    path.write_text(HARNESS)
    return path


def _kill_loop(harness, args_for, kills, rng, first_args, seconds):
    """Runs, kills at each point in turn, resumes; returns the number of SIGKILLs.

    `seconds` is how long an uninterrupted process took: random kills land in the first
    90% of that (a resumed process may finish sooner: then it is not killed).
    """
    killed, started = 0, time.perf_counter()
    args = first_args
    for point, count in kills:
        if point == "random":
            delay = float(rng.uniform(0.3, 0.9) * seconds)
            code, out, err = _run(harness, args, delay=delay)
        else:
            code, out, err = _run(harness, args, kill=[point, count])
        assert code in (-signal.SIGKILL, 0), (point, code, err[-3000:])
        assert code != 0 or point == "random", (point, "was never reached", out[-2000:])
        killed += code == -signal.SIGKILL
        args = args_for()
    code, out, err = _run(harness, args)
    assert code == 0, err[-3000:]
    print(f"{killed} kills, {time.perf_counter() - started:.0f} s")
    return killed, out


# The kill points are the command line's file writes (checkpoint, CSV rows, model.keras,
# the SavedModel, lineage, summary, the backup's removal): Python code that is the same on
# every backend. That a resumed run continues exactly as an uninterrupted one is checked
# on each backend by the Python-API test below and tests/models/resume_test.py.
@pytest.mark.backend_independent
def test_cli_survives_sigkills_at_random_moments(tmp_path, harness):
    rng = np.random.default_rng(0)
    straight = tmp_path / "straight"
    seconds = time.perf_counter()
    code, _, err = _run(harness, ["cli", *LM, "--output", str(straight)])
    seconds = time.perf_counter() - seconds
    assert code == 0, err[-3000:]
    for name, kills in (("killed", CLI_KILLS), ("killed_at_random", RANDOM_KILLS)):
        out = tmp_path / name
        killed, stdout = _kill_loop(
            harness, lambda out=out: ["cli", *LM, "--output", str(out), "--resume"], kills,
            rng, ["cli", *LM, "--output", str(out)], seconds,
        )
        if kills is CLI_KILLS:
            assert killed == len(CLI_KILLS)  # a random kill may land after the end
        assert _rows(out / "history.csv") == _rows(straight / "history.csv")
        assert len(_rows(out / "history.csv")) == 5
        assert (out / "lineage.npz").read_bytes() == (straight / "lineage.npz").read_bytes()
        assert _summary(out / "summary.json") == _summary(straight / "summary.json")
        assert zipfile.is_zipfile(out / "model.keras")
        assert (out / "saved_model" / "saved_model.pb").is_file()
        assert not (out / "backup").exists()
        leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
        assert not leftovers
    out = tmp_path / "killed"
    # --resume on the finished run says so and changes nothing.
    def files():  # everything but the lock, which records who ran last
        return {p.name: p.stat().st_mtime_ns for p in out.iterdir()
                if p.name != run_directory.LOCK_FILE}

    before = files()
    code, stdout, err = _run(harness, ["cli", *LM, "--output", str(out), "--resume"])
    assert code == 0, err[-3000:]
    assert "already finished" in stdout
    assert files() == before


def _api_run(harness, tmp_path):
    """An uninterrupted run of the Python API: `(result file, seconds it took)`."""
    straight = tmp_path / "straight.json"
    seconds = time.perf_counter()
    code, _, err = _run(harness, ["api", "-", str(straight)])
    seconds = time.perf_counter() - seconds
    assert code == 0, err[-3000:]
    return straight, seconds


def _check_api_run(out, backup, straight):
    """The killed and continued run ended as the uninterrupted one did."""
    a, b = json.loads(out.read_text()), json.loads(straight.read_text())
    assert a["epoch"] == b["epoch"] == list(range(6))
    for key in b["history"]:
        if key not in TIMING:
            assert a["history"][key] == b["history"][key], key
    for wa, wb in zip(a["weights"], b["weights"]):
        np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb))
    assert _rows(str(out) + ".csv") == _rows(str(straight) + ".csv")
    assert not backup.exists()  # BackupAndRestore's delete_checkpoint=True


# Like the CLI's, these kill points are file writes; the test runs on the default backend,
# and the one below checks a kill and resume on every other backend.
@pytest.mark.backend_independent
def test_python_api_survives_sigkills(tmp_path, harness):
    rng = np.random.default_rng(1)
    straight, seconds = _api_run(harness, tmp_path)
    kills = [("torn_checkpoint", 3), ("csv_row", 2), ("replace", 2), ("csv_row", 1)]
    for name, chain in (("killed", kills), ("killed_at_random", RANDOM_KILLS[:1])):
        backup, out = tmp_path / f"{name}_backup", tmp_path / f"{name}.json"
        args = ["api", str(backup), str(out)]
        killed, _ = _kill_loop(harness, lambda args=args: args, chain, rng, args, seconds)
        if chain is kills:
            assert killed == len(kills)
        _check_api_run(out, backup, straight)


@pytest.mark.skipif(keras.config.backend() == "tensorflow",
                    reason="on TensorFlow, the default backend, the test above kills and "
                           "resumes at every point")
def test_python_api_resumes_after_a_sigkill_on_this_backend(tmp_path, harness):
    # Killed inside its third checkpoint write, the run resumes from the second
    # generation's checkpoint and ends as the uninterrupted run on this backend.
    straight, seconds = _api_run(harness, tmp_path)
    backup, out = tmp_path / "killed_backup", tmp_path / "killed.json"
    args = ["api", str(backup), str(out)]
    killed, _ = _kill_loop(harness, lambda: args, [("torn_checkpoint", 3)],
                           np.random.default_rng(1), args, seconds)
    assert killed == 1
    _check_api_run(out, backup, straight)

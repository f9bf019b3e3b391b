"""The run directory's rules, on directories laid out by hand: no evolution."""

import argparse
import json

import pytest

from keras_lrne import checkpoint
from keras_lrne.commands import run_directory

pytestmark = pytest.mark.backend_independent


def _args(**kwargs):
    return argparse.Namespace(**{"overwrite": False, "resume": False, **kwargs})


def _finished(path, **settings):
    path.mkdir(parents=True, exist_ok=True)
    run_directory.write_summary(str(path), {"final_loss": 1.0}, _args(**settings))
    (path / "history.csv").write_text("epoch,loss\n0,1\n")


def _interrupted(path):
    (path / "backup").mkdir(parents=True)
    (path / "backup" / checkpoint.STATE_FILE).write_text("{}")


def test_new_finished_and_interrupted_runs(tmp_path):
    assert run_directory.prepare_output(_args(), str(tmp_path / "none")) == "new"
    _finished(tmp_path / "done", seed=1)
    with pytest.raises(ValueError, match=r"holds a finished run \(summary.json\).*--overwrite"):
        run_directory.prepare_output(_args(), str(tmp_path / "done"))
    assert run_directory.prepare_output(_args(resume=True), str(tmp_path / "done")) == "finished"
    _interrupted(tmp_path / "cut")
    with pytest.raises(ValueError, match=r"interrupted run's backup.*--resume"):
        run_directory.prepare_output(_args(), str(tmp_path / "cut"))
    assert run_directory.prepare_output(_args(resume=True), str(tmp_path / "cut")) == "resume"
    with pytest.raises(ValueError, match="`--resume` and `--overwrite` exclude each other"):
        run_directory.prepare_output(_args(resume=True, overwrite=True), str(tmp_path / "cut"))


def test_check_ready_refuses_what_prepare_output_would(tmp_path):
    _finished(tmp_path / "done", seed=1)
    _interrupted(tmp_path / "cut")
    for name in ("done", "cut"):
        with pytest.raises(ValueError, match="Pass --resume to continue the comparison"):
            run_directory.check_ready(_args(seed=1), str(tmp_path / name))
        run_directory.check_ready(_args(seed=1, overwrite=True), str(tmp_path / name))
    run_directory.check_ready(_args(seed=1, resume=True), str(tmp_path / "done"))
    with pytest.raises(ValueError, match=r"other settings \(seed: 1 then, 2 now\)"):
        run_directory.check_ready(_args(seed=2, resume=True), str(tmp_path / "done"))


def test_settings_that_do_not_change_a_run_may_differ(tmp_path):
    _finished(tmp_path / "done", seed=1, verbose=0, output="a", with_fit=False)
    stored = run_directory.check_settings(str(tmp_path / "done"),
                                          _args(seed=1, verbose=2, output="b", with_fit=True))
    assert stored["summary"] == {"final_loss": 1.0}
    assert "resume" not in json.loads((tmp_path / "done" / "summary.json").read_text())["args"]
    with pytest.raises(ValueError, match=r"other settings \(with_fit: False then, True now"):
        run_directory.check_settings(str(tmp_path / "done"),
                                     _args(seed=1, verbose=2, output="b", with_fit=True),
                                     also=("with_fit",))


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"is a file, not a directory.*--output="):
        run_directory.make_output_dir(str(tmp_path / "file" / "run"))


def test_overwrite_unmarks_the_old_run_as_finished(tmp_path):
    import argparse

    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "history.csv").write_text("epoch,loss\n0,1\n")
    args = argparse.Namespace(overwrite=True, resume=False)
    mode = run_directory.prepare_output(args, str(tmp_path))
    assert mode == "new"
    # Killed now, then --resume: nothing of the old run may pass for the new one.
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "history.csv").exists()

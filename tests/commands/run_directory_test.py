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
    # A run of `--compare strategies` is the same run whichever strategies it was
    # compared with (`--strategies ga,es` then, `pgpe,es` now).
    _finished(tmp_path / "done", seed=1, verbose=0, output="a", with_fit=False,
              strategies=["ga", "es"])
    stored = run_directory.check_settings(str(tmp_path / "done"),
                                          _args(seed=1, verbose=2, output="b", with_fit=True,
                                                strategies=("pgpe", "es")))
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


PRETRAINED = ["pretrained.json", "pretrained.weights.h5"]  # lm --lora's


def _old_run(path):
    """Every output a finished run of any command writes, laid out by hand."""
    _finished(path, seed=1)
    for name in ["saved_model", "policy", "lineage.npz", "tokenizer.json", "evaluation.json",
                 "loss.png", "return.png", "fitness.png", "accuracy.png", "model.keras",
                 *PRETRAINED]:
        if "." in name:
            (path / name).write_text("old")
        else:
            (path / name / "variables").mkdir(parents=True)
            (path / name / "keras_lrne_policy.json").write_text("old")
    (path / "notes.txt").write_text("the user's own file")


def test_overwrite_removes_every_output_of_the_old_run(tmp_path):
    _old_run(tmp_path)
    _interrupted(tmp_path)
    assert run_directory.prepare_output(_args(overwrite=True), str(tmp_path)) == "new"
    # Killed now: nothing of the old run may pass for the new one's (its policy above all).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_new_run_removes_what_an_unfinished_run_left(tmp_path, capsys):
    # An --overwrite killed after it removed the summary: the old outputs are orphans.
    _old_run(tmp_path)
    (tmp_path / "summary.json").unlink()
    assert run_directory.prepare_output(_args(), str(tmp_path)) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert "held outputs of a run that did not finish (history.csv, model.keras" in \
        capsys.readouterr().out
    # --resume with no backup starts again too, but keeps lm --lora's pretrained weights
    # (checked against the settings when they are loaded).
    _old_run(tmp_path)
    (tmp_path / "summary.json").unlink()
    assert run_directory.prepare_output(_args(resume=True), str(tmp_path)) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", *PRETRAINED]


def test_only_a_finished_run_directory_is_read(tmp_path):
    _finished(tmp_path / "done")
    (tmp_path / "done" / run_directory.LOCK_FILE).write_text("")  # an older version's
    run_directory.check_finished(str(tmp_path / "done"))
    (tmp_path / "exported").mkdir()  # not a run's directory (e.g. export_policy's)
    run_directory.check_finished(str(tmp_path / "exported"))
    _interrupted(tmp_path / "cut")
    with pytest.raises(ValueError, match=r"'.*cut' holds a keras-lrne run that has not "
                                         r"finished \(its backup/ is there but no summary"):
        run_directory.check_finished(str(tmp_path / "cut"))
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / run_directory.LOCK_FILE).write_text("")
    with pytest.raises(ValueError, match=r"no summary.json but a run's lock file.*--resume"):
        run_directory.check_finished(str(tmp_path / "killed"))


def test_the_summary_records_the_generations_the_run_holds(tmp_path):
    args = _args(seed=1, generations=1)
    run_directory.write_summary(str(tmp_path), {"generations": 2}, args, generations=2)
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored["args"]["generations"] == 2 and stored["requested_generations"] == 1
    # The same command line again (--resume --generations 1) finds its finished run...
    run_directory.check_settings(str(tmp_path), args)
    # ...as does one asking for what the run holds; another number is another run.
    run_directory.check_settings(str(tmp_path), _args(seed=1, generations=2))
    with pytest.raises(ValueError, match=r"generations: 2 then, 3 now"):
        run_directory.check_settings(str(tmp_path), _args(seed=1, generations=3))


def test_the_output_lock_file_goes_with_the_run(tmp_path):
    with run_directory.lock(str(tmp_path)):
        assert (tmp_path / run_directory.LOCK_FILE).is_file()
    assert not (tmp_path / run_directory.LOCK_FILE).exists()


def test_the_outputs_list_names_what_the_commands_write():
    from keras_lrne.commands import lora
    from keras_lrne.generation import TOKENIZER_FILE
    from keras_lrne.playback import EVALUATION_FILE

    assert run_directory.RUN_OUTPUTS[0] == run_directory.SUMMARY_FILE  # removed first
    assert {TOKENIZER_FILE, EVALUATION_FILE} <= set(run_directory.RUN_OUTPUTS)
    assert set(run_directory.RESUMABLE_INPUTS) == {lora.PRETRAINED_WEIGHTS,
                                                   lora.PRETRAINED_INFO}

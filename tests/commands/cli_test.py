import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from _helpers import forked

import keras_lrne
from keras_lrne import cli
from keras_lrne.commands import arguments, lm

TINY = ["--population", "4", "--parents", "1", "--generations", "2", "--sequence-length", "8",
        "--num-sequences", "4", "--vocab-size", "64", "--verbose", "0", "--no-export"]
#: TINY with the SavedModel export, for the tests that check it.
EXPORTING = [arg for arg in TINY if arg != "--no-export"]


@pytest.mark.slow
def test_lm_writes_history_plot_and_models(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["lm", *EXPORTING, "--output", str(out)]) == 0
    for name in ("history.csv", "loss.png", "model.keras", "lineage.npz", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "saved_model" / "saved_model.pb").is_file()
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "member_tokens_per_second" in rows[0] and "val_loss" in rows[0]
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["variant"] == "factorized" and summary["generations"] == 2
    # Where the losses stand: uniform guessing (ln V) and the corpus's unigram model.
    assert summary["uniform_loss"] == pytest.approx(np.log(64))
    assert 0 < summary["unigram_loss"] < summary["uniform_loss"]
    # The elite reloads in a fresh process with only `import keras_lrne`.
    code = (
        "import numpy as np, keras, keras_lrne, sys;"
        f"m = keras.saving.load_model({str(out / 'model.keras')!r});"
        "x = np.zeros((1, 8), 'int32');"
        "print(m.predict(x, verbose=0).shape)"
    )
    result = forked.run(("-c", code), timeout=300)  # a fresh process (tests/_helpers)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(1, 8, 64)" in result.stdout


# One run: a comparison's variants with the GA are the test below (a comparison runs
# every variant through the same code whatever the strategy).
@pytest.mark.slow
def test_lm_with_open_es(tmp_path):
    out = tmp_path / "es"
    assert cli.main(["lm", *TINY, "--strategy", "es", "--sigma", "0.05",
                     "--learning-rate", "0.02", "--output", str(out / "factorized"),
                     "--rank", "1", "--embed-rank", "4"]) == 0
    run = json.loads((out / "factorized" / "summary.json").read_text())
    assert run["args"]["strategy"] == "es" and run["args"]["sigma"] == 0.05
    lineage = keras_lrne.Lineage.load(str(out / "factorized" / "lineage.npz"))
    assert lineage.settings["strategy"] == "OpenES"
    assert sorted(lineage.records) == ["noise_seeds", "weights"]
    assert lineage.num_generations == 3


def test_lm_open_es_needs_an_even_population(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["lm", *TINY, "--strategy", "es", "--population", "5", "--output",
                  str(tmp_path / "odd")])
    assert "population_size=5" in capsys.readouterr().err


@pytest.mark.slow
def test_lm_compare_runs_three_variants(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli.main(["lm", *TINY, "--compare", "--output", str(out), "--rank", "1",
                     "--embed-rank", "4"]) == 0
    with open(out / "comparison.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["row"] == "run"]
    assert [r["variant"] for r in rows] == ["factorized", "full", "small"]
    assert "uniform ln V = 4.159" in (out / "comparison.md").read_text()  # ln 64
    params = {r["variant"]: int(r["parameters"]) for r in rows}
    assert params["small"] < params["full"] and params["factorized"] < params["full"]
    assert (out / "comparison.png").is_file() and (out / "comparison.md").is_file()
    for variant in arguments.VARIANTS:
        assert (out / variant / "model.keras").is_file()
    assert "| factorized |" in capsys.readouterr().out


@pytest.mark.slow
def test_lm_from_text_file_and_tfds_mock(tmp_path):
    text = tmp_path / "stories.txt"
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    text.write_text("\n".join(" ".join(rng.choice(words, 30)) for _ in range(20)))
    assert cli.main(["lm", *TINY, "--text-file", str(text), "--output", str(tmp_path / "a")]) == 0
    with tfds.testing.mock_data(num_examples=4):
        assert cli.main(["lm", *TINY, "--dataset", "tiny_shakespeare", "--tokenizer",
                         "character", "--output", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "history.csv").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--text-file", "/does/not/exist.txt"], "text_file"),
        (["--dataset", "tiny_shakespear"], "tiny_shakespeare"),
        (["--population", "3", "--parents", "4"], "population_size=3"),
        (["--sequence-length", "1000000"], "sequence_length"),
    ],
)
def test_lm_bad_input_fails_clearly(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["lm", "--generations", "1", "--verbose", "0", "--output",
                  str(tmp_path), *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.backend_independent
@pytest.mark.parametrize("argv", [["--rank", "0"], ["--generations", "-1"],
                                  ["--variant", "huge"], ["--mutation-rate", "0"]])
def test_lm_argument_validation(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(["lm", *argv])
    assert info.value.code == 2
    assert argv[0] in capsys.readouterr().err


@pytest.mark.backend_independent
def test_paper_settings_fill_only_unset_options():
    args = cli.build_parser().parse_args(["lm", "--paper", "--generations", "5"])
    lm.apply_paper_settings(args, ["lm", "--paper", "--generations", "5"])
    assert (args.population, args.parents, args.generations) == (512, 16, 5)
    assert (args.sequence_length, args.num_sequences) == (128, 1024)


@pytest.mark.slow
def test_lm_resume_after_an_interruption(tmp_path, monkeypatch):
    from keras_lrne import checkpoint

    out = tmp_path / "run"
    original = checkpoint.save_run

    def save_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        raise RuntimeError("killed")

    monkeypatch.setattr(checkpoint, "save_run", save_then_crash)
    with pytest.raises(RuntimeError, match="killed"):
        cli.main(["lm", *TINY, "--output", str(out)])
    monkeypatch.setattr(checkpoint, "save_run", original)
    # Without --resume an interrupted run is never overwritten.
    with pytest.raises(SystemExit) as info:
        cli.main(["lm", *TINY, "--output", str(out)])
    assert info.value.code == 2
    assert cli.main(["lm", *TINY, "--output", str(out), "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["generations"] == 2
    assert not (out / "backup").exists()


@pytest.mark.slow
@pytest.mark.backend_independent
def test_lm_resume_records_the_generations_the_run_holds(tmp_path, monkeypatch, capsys):
    from keras_lrne import checkpoint

    out = tmp_path / "run"
    original, saves = checkpoint.save_run, []

    def crash_after_two(*args, **kwargs):
        original(*args, **kwargs)
        saves.append(1)
        if len(saves) == 2:
            raise RuntimeError("killed")

    monkeypatch.setattr(checkpoint, "save_run", crash_after_two)
    with pytest.raises(RuntimeError, match="killed"):
        cli.main(["lm", *TINY, "--generations", "3", "--output", str(out)])
    monkeypatch.setattr(checkpoint, "save_run", original)
    # Resumed with fewer generations than it completed: it holds 2, and says so.
    assert cli.main(["lm", *TINY, "--generations", "1", "--output", str(out),
                     "--resume"]) == 0
    assert "in 2 generations" in capsys.readouterr().out
    stored = json.loads((out / "summary.json").read_text())
    assert stored["summary"]["generations"] == 2
    assert stored["args"]["generations"] == 2 and stored["requested_generations"] == 1
    with open(out / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    # The same command again finds the finished run.
    assert cli.main(["lm", *TINY, "--generations", "1", "--output", str(out),
                     "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.backend_independent
def test_lm_summary_records_the_real_vocabulary_and_no_lock_stays(tmp_path):
    out = tmp_path / "run"
    # The default corpus has fewer distinct characters than the 2,048 asked for.
    assert cli.main(["lm", *TINY, "--vocab-size", "2048", "--generations", "1",
                     "--output", str(out)]) == 0
    vocabulary = json.loads((out / "tokenizer.json").read_text())["vocabulary"]
    stored = json.loads((out / "summary.json").read_text())
    assert len(vocabulary) < 2048
    assert stored["summary"]["vocab_size"] == len(vocabulary)
    assert stored["summary"]["uniform_loss"] == pytest.approx(np.log(len(vocabulary)))
    assert stored["task"]["vocab_size"] == len(vocabulary)
    assert stored["task"]["requested_vocab_size"] == stored["args"]["vocab_size"] == 2048
    # No lock file, no backup, and (--no-export) no SavedModel.
    assert sorted(p.name for p in out.iterdir()) == [
        "history.csv", "lineage.npz", "loss.png", "model.keras", "summary.json",
        "tokenizer.json"]
    assert stored["args"]["no_export"] is True


def test_lm_resume_with_a_corrupted_backup_fails_clearly(tmp_path, capsys):
    backup = tmp_path / "run" / "backup"
    backup.mkdir(parents=True)
    (backup / "evolution_state.lrne").write_bytes(b"0" * 64 + b"\nnot a checkpoint")
    with pytest.raises(SystemExit) as info:
        cli.main(["lm", *TINY, "--output", str(tmp_path / "run"), "--resume"])
    assert info.value.code == 2
    assert "corrupted" in capsys.readouterr().err


@pytest.mark.slow
def test_lm_output_rules_finished_runs_overwrite_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    # --resume where no backup exists yet starts from the beginning and says so.
    assert cli.main(["lm", *TINY, "--output", str(out), "--resume"]) == 0
    assert "starting from the beginning" in capsys.readouterr().out
    summary = (out / "summary.json").read_bytes()
    # A finished run is never overwritten silently...
    with pytest.raises(SystemExit) as info:
        cli.main(["lm", *TINY, "--output", str(out)])
    assert info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    # ...--resume leaves it as it is...
    assert cli.main(["lm", *TINY, "--output", str(out), "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (out / "summary.json").read_bytes() == summary
    # ...and --overwrite replaces it (history.csv starts again: one row per generation).
    assert cli.main(["lm", *TINY, "--output", str(out), "--overwrite", "--seed", "1"]) == 0
    with open(out / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert json.loads((out / "summary.json").read_text())["args"]["seed"] == 1
    assert "resume" not in json.loads((out / "summary.json").read_text())["args"]


@pytest.mark.backend_independent
@pytest.mark.parametrize("argv, message", [
    (["--seed", "99999999999999999999"], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--mutation-rate", "inf"], "--mutation-rate"),
    (["--resume", "--overwrite"], "--overwrite"),
    (["--strategy", "es", "--sigma", "0"], "--sigma"),
    (["--strategy", "cma"], "--strategy"),
])
def test_lm_more_bad_arguments_name_the_option(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["lm", *TINY, "--output", str(tmp_path / "run"), *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.backend_independent
def test_output_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("not a directory")
    with pytest.raises(SystemExit) as info:
        cli.main(["lm", *TINY, "--output", str(target)])
    assert info.value.code == 2
    assert "--output" in capsys.readouterr().err
    assert target.read_text() == "not a directory"


@pytest.mark.slow
def test_generate_samples_from_an_lm_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["lm", *TINY, "--tokenizer", "word", "--output", str(out)]) == 0
    assert (out / "tokenizer.json").is_file()
    capsys.readouterr()
    argv = ["generate", str(out), "--prompt", "The list", "--max-tokens", "7"]
    assert cli.main([*argv, "--seed", "3"]) == 0
    first = capsys.readouterr().out.strip()
    assert first.startswith("The list ") and len(first.split()) == 2 + 7
    assert cli.main([*argv, "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == first  # seeded
    assert cli.main([*argv, "--temperature", "0"]) == 0
    vocabulary = json.loads((out / "tokenizer.json").read_text())["vocabulary"]
    tokens = capsys.readouterr().out.split()[2:]
    assert all(t in vocabulary[2:] for t in tokens)  # never padding or [UNK]
    for bad, message in [
        (["generate", str(tmp_path), "--prompt", "x"], "model.keras"),
        (["generate", str(out), "--prompt", "   "], "`prompt`"),
        (["generate", str(out), "--prompt", "x", "--temperature", "-1"], "number >= 0"),
        (["generate", str(out), "--prompt", "x", "--temperature", "inf"], "--temperature"),
    ]:
        with pytest.raises(SystemExit) as info:
            cli.main(bad)
        assert info.value.code == 2
        assert message in capsys.readouterr().err, bad


def _console_script_env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


# The console script's own import path: argv[0] is `keras-lrne`, then `main(...)`.
CONSOLE = (
    "import sys; sys.argv = ['keras-lrne', *sys.argv[1:]];"
    "from keras_lrne.cli import main\n"
    "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
    "heavy = sorted(m for m in ('tensorflow', 'jax', 'keras') if m in sys.modules)\n"
    "print('HEAVY', heavy); sys.exit(code)"
)


@pytest.mark.backend_independent
@pytest.mark.parametrize("argv, code, text", [
    (["--help"], 0, "COMMAND"),
    (["lm", "--help"], 0, "--one-document-per-line"),
    (["--version"], 0, "keras-lrne 0.1.0"),
    (["lm", "--population", "0"], 2, "--population: expected a positive integer"),
    (["atari", "--seed", "99999999999999999999"], 2, "--seed"),
])
def test_help_version_and_argument_errors_import_no_backend(argv, code, text):
    result = subprocess.run([sys.executable, "-c", CONSOLE, *argv], capture_output=True,
                            text=True, env=_console_script_env(), timeout=120)
    assert result.returncode == code, result.stderr
    assert text in result.stdout + result.stderr
    assert "HEAVY []" in result.stdout  # neither TensorFlow, JAX nor Keras was imported


@pytest.mark.backend_independent
def test_python_dash_m_parses_before_importing_the_backend():
    # `python -m keras_lrne` is the console script too: the package leaves the API (and
    # the backend's start-up) to it. `-X importtime` lists every module imported.
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "keras_lrne",
                             "--version"], capture_output=True, text=True,
                            env=_console_script_env(), timeout=120)
    assert result.returncode == 0 and "keras-lrne 0.1.0" in result.stdout, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "keras_lrne.cli" in imported
    assert not imported & {"keras", "tensorflow", "jax"}


@pytest.mark.slow
@pytest.mark.backend_independent
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_console_script_keeps_tensorflow_start_up_lines_off_stderr(backend, tmp_path):
    # From a user's shell (no TF_CPP_MIN_LOG_LEVEL): a command that loads Keras, the
    # backend and TensorFlow (`generate` tokenises with it) prints only its own error.
    env = dict(os.environ, KERAS_BACKEND=backend)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_LRNE_BACKEND_LOGS"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", CONSOLE, "generate", str(tmp_path), "--prompt", "x"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "'tensorflow'" in result.stdout  # TensorFlow was imported
    assert result.stderr.splitlines() == [
        line for line in result.stderr.splitlines() if "keras-lrne generate: error" in line]
    assert "model.keras" in result.stderr


@pytest.mark.backend_independent
def test_every_option_has_help_with_its_default():
    import argparse

    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        text = sub.format_help()
        assert ".." not in sub.description, (name, sub.description)
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            assert action.help, (name, action.option_strings)
            if action.default not in (None, False):
                assert f"Default: {action.default}" in " ".join(text.split()), (
                    name, action.option_strings)


def test_a_tfds_name_that_cannot_be_downloaded_fails_fast(monkeypatch, capsys):
    import socket
    import time

    def unreachable(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", unreachable)  # no network
    start = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        cli.main(["lm", *TINY, "--dataset", "tiny_shakespeare", "--output", "unused"])
    assert info.value.code == 2
    assert time.perf_counter() - start < 60
    err = capsys.readouterr().err
    assert "tiny_shakespeare" in err and "--text-file" in err and "cannot be downloaded" in err


def test_lm_text_file_keeps_line_breaks_unless_one_document_per_line(tmp_path):
    text = tmp_path / "play.txt"
    text.write_text("ROMEO:\nBut soft!\n\nJULIET:\nAy me.\n" * 30, encoding="utf-8")
    # The task the command builds from its arguments (what a run's tokenizer.json holds:
    # tests/commands/cli_test.py::test_generate_samples_from_an_lm_run reads one back).
    for flags, newline in (([], True), (["--one-document-per-line"], False)):
        args = cli.build_parser().parse_args(
            ["lm", *TINY, "--tokenizer", "character", "--text-file", str(text), *flags,
             "--output", str(tmp_path / "unused")])
        assert ("\n" in lm.make_task(args).vocabulary) is newline

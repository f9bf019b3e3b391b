"""`keras-lrne lm --lora RANK --pretrain-seconds S`: pretrain by fit(), evolve LoRA adapters."""

import csv
import json
import shutil

import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne import cli
from keras_lrne.commands import lm, lora

TINY = ["--population", "4", "--parents", "1", "--generations", "2", "--sequence-length", "8",
        "--num-sequences", "4", "--vocab-size", "64", "--verbose", "0", "--no-export"]
LORA = ["lm", "--lora", "2", "--pretrain-seconds", "1", *TINY]


def _weights(model):
    """`{path: array}` of a model's weights outside the LoRA adapters."""
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights
            if not w.path.rsplit("/", 1)[-1].startswith("lora_")}


def _history(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "generation_seconds"
                 and "per_second" not in k} for row in csv.DictReader(f)]


@pytest.mark.backend_independent
@pytest.mark.parametrize("argv, message", [
    (["--lora", "0"], "argument --lora: expected a positive integer, received '0'"),
    (["--lora", "x"], "argument --lora"),
    (["--lora", "2", "--pretrain-seconds", "0"], "argument --pretrain-seconds"),
    (["--lora", "2", "--pretrain-seconds", "nan"], "argument --pretrain-seconds"),
    (["--pretrain-seconds", "5"], "--pretrain-seconds 5 without --lora"),
    (["--lora", "2", "--variant", "factorized"], "--lora 2 with --variant factorized"),
    (["--lora", "2", "--compare"], "--lora 2 with --compare"),
    (["--lora", "2", "--seeds", "2"], "--lora 2 with --seeds"),
    (["--lora", "2", "--fresh-batch"], "--lora 2 with --fresh-batch"),
])
def test_bad_lora_arguments_name_the_option(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        cli.main(["lm", *argv, "--output", str(out)])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # refused before any work


@pytest.mark.backend_independent
def test_lora_settings_fill_only_unset_options():
    argv = ["lm", "--lora", "4", "--population", "8", "--variant", "small"]
    args = cli.build_parser().parse_args(argv)
    lm.apply_lora_settings(args, argv)
    assert (args.variant, args.population, args.generations) == ("small", 8, 80)
    assert (args.num_sequences, args.mutation_rate, args.pretrain_seconds) == (128, 0.005, 60)
    plain = cli.build_parser().parse_args(["lm"])
    lm.apply_lora_settings(plain, ["lm"])
    assert (plain.variant, plain.population, plain.pretrain_seconds) == ("factorized", 32, None)


def test_lora_run_writes_the_summary_and_keeps_the_base_weights(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*LORA, "--output", str(out)]) == 0
    for name in ("history.csv", "accuracy.png", "model.keras", "lineage.npz",
                 "pretrained.weights.h5", "pretrained.json", "summary.json"):
        assert (out / name).is_file(), name
    stored = json.loads((out / "summary.json").read_text())
    summary = stored["summary"]
    assert stored["args"]["lora"] == 2 and stored["args"]["variant"] == "full"
    for side in ("before", "after"):
        for key in ("heldout_accuracy", "train_accuracy"):
            assert 0 <= summary[f"{key}_{side}"] <= 1
        assert np.isfinite(summary[f"heldout_loss_{side}"])
    assert summary["generations"] == 2 and summary["lora_rank"] == 2
    assert summary["lora_layers"] == 18  # 3 blocks: query, key, value, output, 2 feed-forward
    assert summary["pretrain_batches"] >= 1 and summary["pretrain_seconds"] == 1
    rows = _history(out / "history.csv")
    assert len(rows) == 2 and "fitness" in rows[0]
    assert "held-out accuracy" in capsys.readouterr().out
    # --resume leaves a finished run as it is.
    assert cli.main([*LORA, "--output", str(out), "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
    # Only the adapters evolved: every other weight is the pretrained one, bit for bit.
    evolved = keras.saving.load_model(str(out / "model.keras"))
    base = keras_lrne.presets.language_model("full", vocab_size=64, sequence_length=8)
    base.load_weights(str(out / "pretrained.weights.h5"))
    expected, got = _weights(base), _weights(evolved)
    assert sorted(expected) == sorted(got)
    for path, value in expected.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)
    # Before evolution the model is the pretrained one: the summary's loss is its loss.
    task = lm.make_task(cli.build_parser().parse_args(LORA))
    assert lora.held_out(base, *task.validation_data())["loss"] == pytest.approx(
        summary["heldout_loss_before"], rel=1e-6)


def test_lora_resume_loads_the_pretrained_weights_and_matches_an_unbroken_run(
        tmp_path, monkeypatch, capsys):
    from keras_lrne import checkpoint

    out = tmp_path / "run"
    original = checkpoint.save_run

    def save_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        raise RuntimeError("killed")

    monkeypatch.setattr(checkpoint, "save_run", save_then_crash)
    with pytest.raises(RuntimeError, match="killed"):
        cli.main([*LORA, "--output", str(out)])
    monkeypatch.setattr(checkpoint, "save_run", original)
    pretrained = (out / "pretrained.weights.h5").read_bytes()

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretrained again on --resume")

    monkeypatch.setattr(lora, "pretrain", no_pretraining)
    # Other pretraining settings are refused, naming them.
    with pytest.raises(SystemExit):
        cli.main([*LORA, "--pretrain-seconds", "2", "--output", str(out), "--resume"])
    assert "pretrain_seconds: 1.0 then, 2.0 now" in capsys.readouterr().err
    # A backup without its pretrained weights is refused.
    (out / "pretrained.json").rename(tmp_path / "pretrained.json")
    with pytest.raises(SystemExit):
        cli.main([*LORA, "--output", str(out), "--resume"])
    assert "pretrained.json is missing" in capsys.readouterr().err
    (tmp_path / "pretrained.json").rename(out / "pretrained.json")

    assert cli.main([*LORA, "--output", str(out), "--resume"]) == 0
    assert "pretraining skipped" in capsys.readouterr().out
    assert (out / "pretrained.weights.h5").read_bytes() == pretrained
    assert not (out / "backup").exists()
    # An unbroken run from the same pretrained weights (--resume with no backup yet
    # loads them and evolves from the start) ends with the same History and elite.
    unbroken = tmp_path / "unbroken"
    unbroken.mkdir()
    for name in ("pretrained.weights.h5", "pretrained.json"):
        shutil.copy(out / name, unbroken / name)
    assert cli.main([*LORA, "--output", str(unbroken), "--resume"]) == 0
    assert _history(out / "history.csv") == _history(unbroken / "history.csv")
    a = keras.saving.load_model(str(out / "model.keras"))
    b = keras.saving.load_model(str(unbroken / "model.keras"))
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(wa),
                                      keras.ops.convert_to_numpy(wb), err_msg=wa.path)
    for key in ("heldout_accuracy_after", "heldout_loss_after", "train_accuracy_after"):
        assert (json.loads((out / "summary.json").read_text())["summary"][key]
                == json.loads((unbroken / "summary.json").read_text())["summary"][key])

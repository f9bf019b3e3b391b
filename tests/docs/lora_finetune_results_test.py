"""docs/results/lora_finetune: the published histories are the runs its report is made of."""

import csv
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "docs" / "results" / "lora_finetune"


def _report():
    spec = importlib.util.spec_from_file_location("lora_finetune_report", ROOT / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _seeds():
    return sorted(ROOT.glob("seed_*/results.json"))


@pytest.mark.backend_independent
def test_report_files_are_what_report_py_writes_from_the_seeds():
    assert len(_seeds()) == 5
    for name, text in _report().outputs(str(ROOT)).items():
        assert (ROOT / name).read_text() == text, f"out of date, run {ROOT / 'report.py'}"


@pytest.mark.backend_independent
@pytest.mark.parametrize("path", _seeds(), ids=lambda p: p.parent.name)
def test_each_seeds_histories_end_at_its_results(path):
    results = json.loads(path.read_text())
    directory = path.parent
    assert directory.name == f"seed_{results['seed']}"
    pretrain = _rows(directory / "pretrain.csv")
    evolution = _rows(directory / "evolution.csv")
    fits = {name: _rows(directory / f"{name}_continued.csv") for name in ("fit", "fit_low_lr")}
    # Held-out exact match: the last epoch of pretraining is the pretrained model, the
    # last generation's val_fitness is the evolved model, each continued fit()'s last
    # epoch is its model.
    assert float(pretrain[-1]["val_exact_match"]) == pytest.approx(
        results["before"]["exact_match"], abs=1e-6)
    assert float(evolution[-1]["val_fitness"]) == pytest.approx(
        results["after_evolution"]["exact_match"], abs=1e-6)
    for name, rows in fits.items():
        assert float(rows[-1]["val_exact_match"]) == pytest.approx(
            results[f"after_{name}"]["exact_match"], abs=1e-6)
        assert max(float(row["val_exact_match"]) for row in rows) == pytest.approx(
            results["heldout_during"][name]["max"], abs=1e-6)
        # Each fit() baseline had the evolution's wall time (checked per batch).
        assert results[f"{name}_seconds"] >= results["evolution_seconds"]
    assert len(evolution) == results["generations"]
    assert len(pretrain) * 250 == results["pretrain_steps"]
    assert float(evolution[-1]["fitness"]) == pytest.approx(results["final_fitness"], abs=1e-6)
    for model in ("before", "after_evolution", "after_fit", "after_fit_low_lr"):
        assert results[model]["exact_match"] == results[model]["greedy_exact_match"]

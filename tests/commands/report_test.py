"""The comparison report, checked on small synthetic `history.csv` files: no evolution."""

import argparse
import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from keras_lrne.commands import report

pytestmark = pytest.mark.backend_independent


def _history(path, rows):
    """Writes a Keras `CSVLogger`-style history (an `epoch` column, then the logs)."""
    path.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    with open(path / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", *keys])
        writer.writeheader()
        for epoch, row in enumerate(rows):
            writer.writerow({"epoch": epoch, **row})
    return str(path)


def _lm_run(path, losses, seconds=1.0):
    return _history(path, [{"loss": loss, "val_loss": loss + 0.5,
                            "generation_seconds": seconds} for loss in losses])


LM_SUMMARY = {"parameters": 1000, "member_tokens_per_generation": 64,
              "uniform_loss": 4.0, "unigram_loss": 3.5}


def test_lm_record_reads_final_loss_wall_time_and_tokens(tmp_path):
    out = _lm_run(tmp_path / "run", [3.0, 2.5, 2.0], seconds=1.5)
    row, (values, x, evolved, val) = report.run_record("lm", "factorized", 7, out,
                                                       LM_SUMMARY)
    assert row == {"label": "factorized", "seed": 7, "parameters": 1000, "generations": 3,
                   "wall_seconds": 4.5, "final_loss": 2.0, "final_val_loss": 2.5,
                   "best_val_loss": min(val), "member_tokens": 3 * 64}
    assert values == [3.0, 2.5, 2.0] and evolved and len(val) == 3
    np.testing.assert_allclose(x, [64, 128, 192])  # member-tokens, not wall time


def test_environment_record_counts_steps_and_first_stage_time(tmp_path):
    out = _history(tmp_path / "run", [
        {"loss": -r, "episode_return": r, "env_steps": 100, "generation_seconds": 2.0,
         "first_stage_seconds": 1.25} for r in (1.0, 4.0)])
    row, (values, x, _, val) = report.run_record("control", "full", 0, out,
                                                 {"parameters": 9})
    assert val is None
    assert row["final_episode_return"] == 4.0 and row["env_steps"] == 200
    assert row["first_stage_seconds"] == 2.5 and row["wall_seconds"] == 4.0
    assert values == [1.0, 4.0] and list(x) == [100, 200]


def test_fit_record_is_read_at_equal_tokens_or_at_equal_time(tmp_path):
    out = _history(tmp_path / "fit", [
        {"loss": 3.0, "val_loss": 3.2, "elapsed_seconds": 0.5, "member_tokens": 320},
        {"loss": 2.0, "val_loss": 2.4, "elapsed_seconds": 1.0, "member_tokens": 640},
        {"loss": 1.5, "val_loss": 2.6, "elapsed_seconds": 1.5, "member_tokens": 960}])
    summary = {"parameters": 5, "budget_seconds": 1.0, "budget_member_tokens": 900}
    row, (_, x, evolved, _) = report.run_record("lm", "full_fit", 1, out, summary)
    assert row["final_loss"] == 1.5 and row["member_tokens"] == 960  # first >= 900
    assert row["final_val_loss"] == 2.6 and row["best_val_loss"] == 2.4
    assert row["generations"] is None and not evolved and x == [320, 640, 960]
    row, (_, x, _, _) = report.run_record("lm", "full_fit_time", 1, out, summary,
                                          match="time")
    assert row["final_loss"] == 2.0 and row["wall_seconds"] == 1.0 and x == [320, 640]
    with pytest.raises(ValueError, match=r"no token budget.*--overwrite"):
        report.run_record("lm", "full_fit", 1, out, {"parameters": 5})


def test_record_of_a_cut_history_is_refused_with_the_directory(tmp_path):
    out = _history(tmp_path / "run", [{"loss": 1.0, "val_loss": 1.0}])
    with pytest.raises(ValueError, match=r"generation_seconds.*--overwrite") as info:
        report.run_record("lm", "full", 0, out, {"parameters": 1})
    assert repr(out) in str(info.value)


@pytest.mark.parametrize("compare, labels, expected", [
    ("variants", ["factorized", "full", "small"],
     [("factorized", "full"), ("factorized", "small")]),
    ("variants", ["factorized", "full", "small", "factorized_fit", "full_fit"],
     [("factorized", "full"), ("factorized", "small"), ("factorized", "factorized_fit"),
      ("full", "full_fit")]),
    ("ranks", ["rank_1", "rank_4", "full"], [("rank_1", "full"), ("rank_4", "full")]),
    ("strategies", ["ga", "es", "factorized_fit"], [("ga", "es")]),
    ("strategies", ["pgpe", "es", "cma-es"], [("pgpe", "es"), ("pgpe", "cma-es")]),
    (None, ["factorized"], []),
])
def test_tested_pairs(compare, labels, expected):
    assert report.tested_pairs(compare, labels) == expected


def test_stage_one_time_ratio_is_paired_by_seed():
    records = [
        {"label": "factorized", "seed": 0, "first_stage_seconds": 6.0},
        {"label": "full", "seed": 0, "first_stage_seconds": 10.0},
        {"label": "factorized", "seed": 1, "first_stage_seconds": 8.0},
        {"label": "full", "seed": 1, "first_stage_seconds": 10.0},
        {"label": "small", "seed": 1, "first_stage_seconds": 1.0},
        {"label": "factorized", "seed": 2, "first_stage_seconds": 5.0},  # no full run
    ]
    (line,) = report.paired_ratio_notes(records, "first_stage_seconds", "stage-1 time")
    half = 12.706205 * np.std([0.6, 0.8], ddof=1) / math.sqrt(2)
    assert line.startswith("Stage-1 time of factorized over full, paired by seed: 0.700 ± "
                           f"{half:.3f} (95% CI) over 2 seed(s) (0.600, 0.800)")
    assert report.paired_ratio_notes(records[:1], "first_stage_seconds", "x") == []



def test_write_report_tables_tests_and_plot(tmp_path):
    losses = {"factorized": (2.0, 2.1, 1.9), "full": (3.0, 3.3, 3.1), "small": (2.5, 2.6, 2.4)}
    records, curves, dirs = [], {}, []
    for seed in range(3):
        for label, finals in losses.items():
            out = _lm_run(tmp_path / label / f"seed_{seed}", [4.0, finals[seed]])
            row, curve = report.run_record("lm", label, seed, out, LM_SUMMARY)
            records.append(row)
            curves.setdefault(label, []).append(curve)
            dirs.append(out)
    args = argparse.Namespace(command="lm", compare="variants", output=str(tmp_path),
                              variant="factorized", strategy="ga", population=8, parents=2,
                              generations=2, with_fit=False, fit_learning_rate=1e-3)
    argv = ["lm", "--compare", "--seeds", "0,1,2"]
    text = report.write_report(args, argv, records, curves, [LM_SUMMARY] * 9, dirs)

    with open(tmp_path / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    means = {r["variant"]: float(r["final_loss"]) for r in rows if r["row"] == "mean"}
    assert means == pytest.approx({k: np.mean(v) for k, v in losses.items()})
    assert sum(r["row"] == "run" for r in rows) == 9
    # Seeds pair the runs: the paired t-test, with its Holm-adjusted p-value.
    paired = stats.ttest_rel(losses["factorized"], losses["full"])
    assert ("- factorized vs full, final loss (paired, n = 3): mean difference "
            in text)
    assert f"paired t = {paired.statistic:.2f}, p = " in text
    assert "Holm p = " in text and "Wilcoxon W = " in text and "detectable" in text
    assert "- factorized vs small, final loss (paired, n = 3):" in text
    assert "Command: `keras-lrne lm --compare --seeds 0,1,2`" in text
    assert "uniform ln V = 4.000, unigram = 3.500" in text
    assert "population 8, 2 parents, 2 generations, strategy ga" in text
    assert (tmp_path / "comparison.md").read_text() == text
    assert (tmp_path / "comparison.png").stat().st_size > 0
    json.dumps(records)  # the rows stay plain data


@pytest.mark.parametrize("command, game, expected", [
    ("atari", "Frostbite", {"random": 65.2, "human": 4334.7}),
    ("atari", "ALE/Kangaroo-v5", {"random": 52.0, "human": 3035.0}),
    ("atari", "Pong", None),
    ("carracing", None, {"paper (about)": 730.0}),
    ("control", None, None),
])
def test_reference_lines(command, game, expected):
    args = argparse.Namespace(command=command, game=game)
    assert report.reference_lines(args) == expected


def test_the_plot_drops_a_panel_that_repeats_the_generation_axis(tmp_path):
    from keras_lrne import plotting

    fixed = {"a": [([1.0, 2.0, 3.0], [1000, 2000, 3000], True)]}
    assert plotting._proportional(fixed["a"])
    varying = [([1.0, 2.0], [900, 2100], True)]
    assert not plotting._proportional(varying)
    for groups in (fixed, {"a": varying + [([1.0], [1000], True)]}):
        path = tmp_path / "p.png"
        plotting.plot_comparison(groups, str(path), baselines={"human": 3.0})
        assert path.stat().st_size > 0

"""Statistics of `keras_lrne.comparison` against hand-computed values, and the CLI's
`--compare ... --seeds N` experiments: files, numbers that follow from the runs' own
History CSVs, resuming, and argument errors."""

import csv
import json
import math
import os
import shutil

import numpy as np
import pytest
from scipy import stats

from keras_lrne import cli, comparison
from keras_lrne.commands import arguments, report, run_directory

BASE = ["--population", "4", "--parents", "1", "--generations", "2", "--sequence-length", "8",
        "--num-sequences", "4", "--vocab-size", "64", "--verbose", "0", "--embed-rank", "4"]
TINY = [*BASE, "--rank", "1"]


# ------------------------------------------------------------------- statistics


def test_summarize_matches_hand_computed_values():
    s = comparison.summarize([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; sample variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3;
    # t_{0.975, 3} = 3.182446 (tables); half width = t * std / sqrt(4).
    assert s["n"] == 4 and s["n_dropped"] == 0
    assert s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))
    assert s["ci_half_width"] == pytest.approx(3.182446 * math.sqrt(5 / 3) / 2, rel=1e-6)
    assert s["ci_low"] == pytest.approx(2.5 - s["ci_half_width"])
    assert s["ci_high"] == pytest.approx(2.5 + s["ci_half_width"])
    ninety = comparison.summarize([1.0, 2.0, 3.0, 4.0], confidence=0.9)
    assert ninety["ci_half_width"] == pytest.approx(2.353363 * math.sqrt(5 / 3) / 2, rel=1e-6)


def test_summarize_drops_failed_runs_and_needs_two_for_an_interval():
    s = comparison.summarize([1.0, float("nan"), 3.0, float("inf")])
    assert (s["n"], s["n_dropped"], s["mean"]) == (2, 2, 2.0)
    one = comparison.summarize([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    with pytest.raises(ValueError, match=r"confidence=1\.5"):
        comparison.summarize([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="values=\\[\\]"):
        comparison.summarize([])


def test_significance_matches_hand_computed_welch_and_mann_whitney():
    a, b = [1.0, 2.0, 4.0], [2.0, 3.0, 7.0, 9.0]
    test = comparison.significance(a, b)
    # Welch: means 7/3 and 21/4, variances 7/3 and 131/12.
    va, vb = 7 / 3 / 3, 131 / 12 / 4
    t = (7 / 3 - 21 / 4) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    assert test["welch_t"] == pytest.approx(t) and t == pytest.approx(-1.5575, abs=1e-4)
    assert test["welch_p"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    # Mann-Whitney U of a: pairs (a_i > b_j) + half the ties: 4 > 2, 4 > 3 and the tie
    # 2 = 2: U = 2.5.
    assert test["mann_whitney_u"] == pytest.approx(2.5)
    # With the tie, p is exact by permutation: 10 of the C(7, 3) = 35 splits give a U
    # at least as far from its mean 6 as 2.5 is (U <= 2.5 or U >= 9.5).
    assert test["mann_whitney_p"] == pytest.approx(10 / 35)
    assert (test["n_a"], test["n_b"]) == (3, 4)
    # Fully separated samples of 3: U = 0 and the exact p = 2 / C(6, 3) = 0.1.
    separated = comparison.significance([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert separated["mann_whitney_u"] == 0.0
    assert separated["mann_whitney_p"] == pytest.approx(0.1)


def test_significance_is_nan_when_undefined():
    assert math.isnan(comparison.significance([1.0], [2.0, 3.0])["welch_p"])
    assert math.isnan(comparison.significance([1.0, 1.0], [1.0, 1.0])["mann_whitney_p"])


def test_curve_band():
    mean, low, high = comparison.curve_band([[1.0, 2.0, 9.0], [3.0, 4.0]])
    np.testing.assert_allclose(mean, [2.0, 3.0])  # cut to the shortest curve
    half = 12.706205 * math.sqrt(2.0) / math.sqrt(2)  # t_{0.975,1}, std sqrt(2)
    np.testing.assert_allclose(high - mean, [half, half], rtol=1e-6)
    np.testing.assert_allclose(mean - low, [half, half], rtol=1e-6)
    one = comparison.curve_band([[1.0, 2.0]])
    np.testing.assert_array_equal(one[1], one[0])


# ------------------------------------------------------------------- the CLI


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def lm_comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "lm"
    assert cli.main(["lm", *TINY, "--compare", "--seeds", "2", "--output", str(out)]) == 0
    return out


def test_compare_seeds_writes_every_file(lm_comparison):
    out = lm_comparison
    for name in ("comparison.csv", "comparison.md", "comparison.png"):
        assert (out / name).is_file(), name
    for variant in arguments.VARIANTS:
        for seed in (0, 1):
            run = out / variant / f"seed_{seed}"
            assert (run / "history.csv").is_file() and (run / "model.keras").is_file()
            summary = json.loads((run / "summary.json").read_text())
            assert summary["args"]["seed"] == seed and summary["args"]["variant"] == variant
    rows = _rows(out / "comparison.csv")
    assert [(r["variant"], r["row"], r["seed"]) for r in rows[:6]] == [
        ("factorized", "run", "0"), ("factorized", "run", "1"), ("factorized", "mean", ""),
        ("factorized", "std", ""), ("factorized", "ci95_low", ""),
        ("factorized", "ci95_high", "")]
    assert len(rows) == 3 * 6
    report = (out / "comparison.md").read_text()
    assert "factorized vs full, final loss: Welch's t" in report
    assert "Mann-Whitney U" in report and "uniform ln V = 4.159" in report
    assert "keras-lrne lm --population 4" in report


def test_compare_numbers_follow_from_the_runs_history_files(lm_comparison):
    out = lm_comparison
    rows = _rows(out / "comparison.csv")
    for variant in arguments.VARIANTS:
        finals, walls = [], []
        for seed in (0, 1):
            history = _history(out / variant / f"seed_{seed}" / "history.csv")
            run = next(r for r in rows if r["variant"] == variant and r["seed"] == str(seed))
            final = float(history[-1]["loss"])
            wall = sum(float(h["generation_seconds"]) for h in history)
            assert float(run["final_loss"]) == pytest.approx(final)
            assert float(run["final_val_loss"]) == pytest.approx(float(history[-1]["val_loss"]))
            assert float(run["wall_seconds"]) == pytest.approx(wall)
            assert int(run["member_tokens"]) == 2 * 4 * 4 * 8  # generations x P x 4 x 8
            finals.append(final)
            walls.append(wall)
        agg = {r["row"]: r for r in rows if r["variant"] == variant and r["row"] != "run"}
        assert float(agg["mean"]["final_loss"]) == pytest.approx(np.mean(finals))
        assert float(agg["std"]["final_loss"]) == pytest.approx(np.std(finals, ddof=1))
        half = 12.706205 * np.std(finals, ddof=1) / math.sqrt(2)
        assert float(agg["ci95_low"]["final_loss"]) == pytest.approx(np.mean(finals) - half,
                                                                     rel=1e-5)
        assert float(agg["ci95_high"]["final_loss"]) == pytest.approx(np.mean(finals) + half,
                                                                      rel=1e-5)
        assert float(agg["mean"]["wall_seconds"]) == pytest.approx(np.mean(walls))
        assert agg["mean"]["n"] == "2"


def test_resuming_a_comparison_skips_finished_runs(lm_comparison, tmp_path, capsys):
    out = tmp_path / "lm"
    shutil.copytree(lm_comparison, out)
    # An interrupted comparison: the last run never finished, no report was written.
    shutil.rmtree(out / "small" / "seed_1")
    for name in ("comparison.csv", "comparison.md", "comparison.png"):
        os.remove(out / name)
    kept = out / "factorized" / "seed_0" / "model.keras"
    before = kept.stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(["lm", *TINY, "--compare", "--seeds", "2", "--output", str(out),
                     "--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("has already finished") == 5
    assert kept.stat().st_mtime_ns == before
    assert (out / "small" / "seed_1" / "summary.json").is_file()
    resumed = _rows(out / "comparison.csv")
    original = _rows(lm_comparison / "comparison.csv")
    timing = ("wall_seconds",)
    for a, b in zip(resumed, original):
        assert {k: v for k, v in a.items() if k not in timing} == \
            {k: v for k, v in b.items() if k not in timing}
    # Without --resume a finished comparison is never overwritten silently.
    with pytest.raises(SystemExit):
        cli.main(["lm", *TINY, "--compare", "--seeds", "2", "--output", str(out)])
    assert "--overwrite" in capsys.readouterr().err
    # Finished runs are reused only under the same settings.
    with pytest.raises(SystemExit):
        cli.main(["lm", *TINY, "--compare", "--seeds", "2", "--output", str(out), "--resume",
                  "--mutation-rate", "0.5"])
    assert "mutation_rate: 0.01 then, 0.5 now" in capsys.readouterr().err


def test_compare_ranks_with_fit(tmp_path, capsys):
    out = tmp_path / "ranks"
    assert cli.main(["lm", *BASE, "--compare", "ranks", "--ranks", "2,1", "--with-fit",
                     "--output", str(out)]) == 0
    rows = [r for r in _rows(out / "comparison.csv") if r["row"] == "run"]
    assert [r["variant"] for r in rows] == ["rank_1", "rank_1_fit", "rank_2", "rank_2_fit",
                                            "full", "full_fit"]
    params = {r["variant"]: int(r["parameters"]) for r in rows}
    assert params["rank_1"] < params["rank_2"] < params["full"]
    assert params["rank_1_fit"] == params["rank_1"]
    for label in ("rank_1", "full"):
        evolved = json.loads((out / label / "summary.json").read_text())
        fit = json.loads((out / f"{label}_fit" / "summary.json").read_text())
        assert json.loads((out / label / "summary.json").read_text())["args"]["rank"] == \
            fit["args"]["rank"]
        # fit() trained for at least the wall time the evolved run took.
        assert fit["summary"]["fit_seconds"] >= fit["summary"]["budget_seconds"]
        assert fit["summary"]["budget_seconds"] == pytest.approx(
            evolved["summary"]["evolution_seconds"])
        history = _history(out / f"{label}_fit" / "history.csv")
        assert float(history[-1]["loss"]) == pytest.approx(fit["summary"]["final_loss"])
    report = (out / "comparison.md").read_text()
    assert "rank_1 vs full" in report and "fit()` with Adam" in report
    # A fit() run is reused only with the same learning rate.
    with pytest.raises(SystemExit):
        cli.main(["lm", *BASE, "--compare", "ranks", "--ranks", "2,1", "--with-fit",
                  "--output", str(out), "--resume", "--fit-learning-rate", "0.01"])
    assert "fit_learning_rate: 0.001 then, 0.01 now" in capsys.readouterr().err


def test_compare_strategies_on_an_environment(tmp_path):
    out = tmp_path / "cartpole"
    assert cli.main(["control", "--env", "CartPole-v1", "--population", "4", "--parents",
                     "1", "--generations", "2", "--max-episode-steps", "20", "--verbose",
                     "0", "--compare", "strategies", "--seeds", "3,7", "--output",
                     str(out)]) == 0
    rows = _rows(out / "comparison.csv")
    runs = [r for r in rows if r["row"] == "run"]
    assert [(r["variant"], r["seed"]) for r in runs] == [("ga", "3"), ("ga", "7"),
                                                         ("es", "3"), ("es", "7")]
    for run in runs:
        history = _history(out / run["variant"] / f"seed_{run['seed']}" / "history.csv")
        assert float(run["final_episode_return"]) == float(history[-1]["episode_return"])
        assert int(run["env_steps"]) == sum(int(float(h["env_steps"])) for h in history)
        assert float(run["first_stage_seconds"]) == pytest.approx(
            sum(float(h["first_stage_seconds"]) for h in history))
    lineage = json.loads((out / "es" / "seed_7" / "summary.json").read_text())
    assert lineage["args"]["strategy"] == "es" and lineage["args"]["seed"] == 7
    assert "ga vs es, final elite return" in (out / "comparison.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--compare", "--seeds", "0"], "--seeds: expected a positive integer"),
        (["--compare", "--seeds", "1,1"], "expected distinct seeds"),
        (["--compare", "--seeds", "1,x"], "comma-separated list"),
        (["--compare", "ranks", "--ranks", "0,2"], "--ranks: expected"),
        (["--compare", "--seeds", "2", "--seed", "3"], "--seed and --seeds"),
        (["--with-fit"], "--with-fit adds rows to a comparison"),
        (["--compare", "strategies", "--population", "5"], "population_size=5"),
        (["--compare", "bogus"], "invalid choice: 'bogus'"),
        (["--compare", "--variant", "full"], "`--compare variants` sets --variant itself"),
        (["--compare", "ranks", "--rank", "2"], "`--compare ranks` sets --rank itself"),
        (["--compare", "strategies", "--strategy", "es"], "sets --strategy itself"),
        (["--compare", "--ranks", "1,2"], "--ranks lists the ranks of `--compare ranks`"),
    ],
)
def test_compare_argument_errors_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "bad"
    with pytest.raises(SystemExit):
        cli.main(["lm", *TINY, "--output", str(out), *argv])
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.rglob("history.csv"))


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


def test_write_table_and_report_leave_failed_runs_out_and_say_so(tmp_path):
    runs = [{"label": "a", "seed": 0, "final_loss": 1.0},
            {"label": "a", "seed": 1, "final_loss": float("nan")},
            {"label": "a", "seed": 2, "final_loss": 3.0}]
    aggregates = comparison.write_table(runs, tmp_path / "c.csv", ["final_loss"])
    rows = _rows(tmp_path / "c.csv")
    mean = next(r for r in rows if r["row"] == "mean")
    assert mean["n"] == "2" and float(mean["final_loss"]) == 2.0
    report = comparison.markdown_report(runs, aggregates, title="t",
                                        metrics=[("final_loss", "final loss")])
    assert "| a | 2 (1 failed) | 2.000 ± 12.706 |" in report


def test_significance_of_two_constant_samples():
    test = comparison.significance([3.0, 3.0, 3.0], [4.0, 4.0, 4.0])
    assert math.isnan(test["welch_t"]) and math.isnan(test["welch_p"])  # t would be -inf
    assert test["mann_whitney_u"] == 0.0 and test["mann_whitney_p"] == pytest.approx(0.1)


def test_overwrite_unmarks_the_old_run_as_finished(tmp_path):
    import argparse

    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "history.csv").write_text("epoch,loss\n0,1\n")
    args = argparse.Namespace(overwrite=True, resume=False)
    mode = run_directory.prepare_output(args, str(tmp_path))
    assert mode == "new"
    # Killed now, then --resume: nothing of the old run may pass for the new one.
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "history.csv").exists()


def test_a_comparison_checks_every_run_before_the_first(lm_comparison, tmp_path, capsys):
    out = tmp_path / "lm"
    shutil.copytree(lm_comparison, out)
    shutil.rmtree(out / "factorized" / "seed_0")
    with pytest.raises(SystemExit):  # the other runs are finished: no --resume given
        cli.main(["lm", *TINY, "--compare", "--seeds", "2", "--output", str(out)])
    assert "holds a finished run" in capsys.readouterr().err
    assert not (out / "factorized" / "seed_0").exists()  # refused before any work

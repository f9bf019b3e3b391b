"""`--compare ... --seeds N` experiments of the command line: files, numbers that follow
from the runs' own History CSVs, resuming, and argument errors."""

import csv
import json
import math
import os
import shutil

import numpy as np
import pytest

from keras_lrne import cli
from keras_lrne.commands import arguments

BASE = ["--population", "4", "--parents", "1", "--generations", "2", "--sequence-length", "8",
        "--num-sequences", "4", "--vocab-size", "64", "--verbose", "0", "--embed-rank", "4",
        "--no-export"]
TINY = [*BASE, "--rank", "1"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# A comparison is Python over its runs' own files (History CSVs, summaries, the paired
# statistics), the same on every backend: its tests run on the default backend
# (`backend_independent`). Each variant's run itself, and `--with-fit`'s fit() baselines,
# are checked on every backend (tests/commands/cli_test.py, `test_compare_ranks_with_fit`).
@pytest.fixture(scope="module")
def lm_comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "lm"
    assert cli.main(["lm", *TINY, "--compare", "--seeds", "2", "--output", str(out)]) == 0
    return out


@pytest.mark.slow
@pytest.mark.backend_independent
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
    assert "factorized vs full, final loss (paired, n = 2): mean difference" in report
    assert "Wilcoxon W" in report and "uniform ln V = 4.159" in report
    assert "keras-lrne lm --population 4" in report


@pytest.mark.slow
@pytest.mark.backend_independent
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


@pytest.mark.slow
@pytest.mark.backend_independent
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


@pytest.mark.slow
def test_compare_ranks_with_fit(tmp_path, capsys):
    out = tmp_path / "ranks"
    # One rank and the full model: every row kind, a third fewer runs than two ranks
    # (the plan of several ranks: test_ablation_presets_plan_their_runs_and_tests).
    assert cli.main(["lm", *BASE, "--compare", "ranks", "--ranks", "1", "--with-fit",
                     "--output", str(out)]) == 0
    rows = [r for r in _rows(out / "comparison.csv") if r["row"] == "run"]
    assert [r["variant"] for r in rows] == [
        "rank_1", "rank_1_fit", "rank_1_fit_time", "full", "full_fit", "full_fit_time"]
    params = {r["variant"]: int(r["parameters"]) for r in rows}
    assert params["rank_1"] < params["full"]
    assert params["rank_1_fit"] == params["rank_1"]
    for label in ("rank_1", "full"):
        evolved = json.loads((out / label / "summary.json").read_text())
        fit = json.loads((out / f"{label}_fit" / "summary.json").read_text())
        assert json.loads((out / label / "summary.json").read_text())["args"]["rank"] == \
            fit["args"]["rank"]
        # fit() trained for at least the wall time the evolved run took, and on at
        # least as many tokens as its member-tokens.
        assert fit["summary"]["fit_seconds"] >= fit["summary"]["budget_seconds"]
        assert fit["summary"]["budget_seconds"] == pytest.approx(
            evolved["summary"]["evolution_seconds"])
        tokens = {r["variant"]: int(r["member_tokens"]) for r in rows}
        assert fit["summary"]["budget_member_tokens"] == tokens[label]
        assert tokens[f"{label}_fit"] >= tokens[label] >= 0
        history = _history(out / f"{label}_fit" / "history.csv")
        assert float(history[-1]["loss"]) == pytest.approx(fit["summary"]["final_loss"])
    report = (out / "comparison.md").read_text()
    assert "rank_1 vs full" in report and "fit()` with Adam" in report
    # A fit() run is reused only with the same learning rate.
    with pytest.raises(SystemExit):
        cli.main(["lm", *BASE, "--compare", "ranks", "--ranks", "1", "--with-fit",
                  "--output", str(out), "--resume", "--fit-learning-rate", "0.01"])
    assert "fit_learning_rate: 0.001 then, 0.01 now" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_strategies_on_an_environment(tmp_path, capsys):
    out = tmp_path / "cartpole"
    assert cli.main(["control", "--env", "CartPole-v1", "--population", "4", "--parents",
                     "1", "--generations", "2", "--max-episode-steps", "20", "--verbose",
                     "0", "--compare", "strategies", "--seeds", "3,7", "--eval-episodes",
                     "3", "--output", str(out)]) == 0
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
    report = (out / "comparison.md").read_text()
    printed = capsys.readouterr().out
    assert "ga vs es, final elite return (training episodes) (paired, n = 2)" in report
    # Every finished run's elite is played on held-out episodes (keras-lrne evaluate).
    for run in runs:
        evaluation = json.loads((out / run["variant"] / f"seed_{run['seed']}"
                                 / "evaluation.json").read_text())
        assert evaluation["episodes"] == 3
        assert float(run["heldout_return"]) == pytest.approx(evaluation["mean_return"])
        # ...and each run's output says what the held-out episodes gave.
        assert (f"{out / run['variant'] / ('seed_' + run['seed'])}: held-out return "
                f"{evaluation['mean_return']:.1f} ± {evaluation['ci95_half_width']:.1f} "
                "(95% CI) over 3 episodes") in printed
    assert "ga vs es, held-out return (paired, n = 2)" in report
    assert "biased upwards by selection" in report


@pytest.mark.backend_independent
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
        (["--compare", "strategies", "--strategies", "es"], "at least two distinct"),
        (["--compare", "strategies", "--strategies", "es,es"], "at least two distinct"),
        (["--compare", "strategies", "--strategies", "ga,bogus"],
         "Received: 'ga,bogus'"),
        (["--compare", "--strategies", "pgpe,es"],
         "--strategies lists the strategies of `--compare strategies`"),
        (["--compare", "strategies", "--strategies", "pgpe,es", "--population", "5"],
         "population_size=5"),
    ],
)
def test_compare_argument_errors_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "bad"
    with pytest.raises(SystemExit):
        cli.main(["lm", *TINY, "--output", str(out), *argv])
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.rglob("history.csv"))


@pytest.mark.slow
@pytest.mark.backend_independent
def test_a_comparison_checks_every_run_before_the_first(lm_comparison, tmp_path, capsys):
    out = tmp_path / "lm"
    shutil.copytree(lm_comparison, out)
    shutil.rmtree(out / "factorized" / "seed_0")
    with pytest.raises(SystemExit):  # the other runs are finished: no --resume given
        cli.main(["lm", *TINY, "--compare", "--seeds", "2", "--output", str(out)])
    assert "holds a finished run" in capsys.readouterr().err
    assert not (out / "factorized" / "seed_0").exists()  # refused before any work


@pytest.mark.backend_independent
@pytest.mark.parametrize("argv, labels, pairs", [
    (["--compare", "mutation-rates", "--rates", "0.01,0.1", "--factor-rates", "0.1"],
     ["full_mr_0.01", "full_mr_0.1", "factorized_fr_0.1"],
     [("full_mr_0.1", "full_mr_0.01"), ("factorized_fr_0.1", "full_mr_0.01"),
      ("factorized_fr_0.1", "full_mr_0.1")]),
    (["--compare", "mutation-rates", "--rates", "0.03", "--factor-rates", "0.01,0.1"],
     ["full_mr_0.03", "factorized_fr_0.01", "factorized_fr_0.1"],
     [("factorized_fr_0.01", "factorized_fr_0.1"), ("factorized_fr_0.01", "full_mr_0.03"),
      ("factorized_fr_0.1", "full_mr_0.03")]),
    (["--compare", "init"],
     ["full_paper", "full_scaled", "factorized_paper", "factorized_scaled"],
     [("factorized_paper", "full_paper"), ("factorized_scaled", "full_scaled"),
      ("full_scaled", "full_paper"), ("factorized_scaled", "factorized_paper")]),
    (["--compare", "size-matched"], ["factorized_r1_e4", "small"],
     [("factorized_r1_e4", "small")]),
    (["--compare", "ranks", "--ranks", "2,1"], ["rank_1", "rank_2", "full"],
     [("rank_1", "full"), ("rank_2", "full")]),
    (["--compare", "strategies"], ["ga", "es"], [("ga", "es")]),
    (["--compare", "strategies", "--strategies", "pgpe,es,evosax:CMA_ES"],
     ["pgpe", "es", "evosax_CMA_ES"], [("pgpe", "es"), ("pgpe", "evosax_CMA_ES")]),
])
def test_ablation_presets_plan_their_runs_and_tests(argv, labels, pairs):
    from keras_lrne.commands import compare, report

    args = cli.build_parser().parse_args(["lm", *argv])
    plan = compare.comparison_plan(args)
    assert [label for label, _ in plan] == labels
    assert report.tested_pairs(args.compare, labels) == pairs
    overrides = dict(plan)
    if "rank_2" in overrides:
        assert overrides["rank_2"] == {"variant": "factorized", "rank": 2}
    if "pgpe" in overrides:
        assert overrides["pgpe"] == {"strategy": "pgpe"}
        assert overrides["evosax_CMA_ES"] == {"strategy": "evosax:CMA_ES"}
    if "full_mr_0.1" in overrides:
        assert overrides["full_mr_0.1"] == {"variant": "full", "mutation_rate": 0.1}
        assert overrides["factorized_fr_0.1"]["factor_mutation_rate"] == 0.1


@pytest.mark.backend_independent
@pytest.mark.parametrize("argv, message", [
    (["lm", "--compare", "mutation-rates", "--rates", "0.1,-1"], "positive numbers"),
    (["lm", "--compare", "mutation-rates", "--rates", "0.1,0.1"], "distinct rates"),
    (["lm", "--compare", "init", "--init", "scaled"], "sets --init itself"),
    (["lm", "--compare", "size-matched", "--rank", "2"], "sets --rank itself"),
    (["control", "--compare", "init"], "ablation of the language model"),
])
def test_ablation_presets_refuse_what_they_set(tmp_path, capsys, argv, message):
    code = None
    try:
        code = cli.main([*argv, "--output", str(tmp_path / "x")])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.backend_independent
def test_compare_mutation_rates_runs_the_step_size_ablation(tmp_path):
    out = tmp_path / "rates"
    # One rate of each kind, 2 seeds (the plans of several rates are tested above).
    assert cli.main(["lm", *TINY, "--compare", "mutation-rates", "--rates", "0.01",
                     "--factor-rates", "0.1", "--seeds", "0,1", "--output",
                     str(out)]) == 0
    runs = [r for r in _rows(out / "comparison.csv") if r["row"] == "run"]
    assert sorted({r["variant"] for r in runs}) == ["factorized_fr_0.1", "full_mr_0.01"]
    assert len(runs) == 4
    stored = json.loads((out / "factorized_fr_0.1" / "seed_1" / "summary.json").read_text())
    assert stored["args"]["factor_mutation_rate"] == 0.1
    assert stored["args"]["variant"] == "factorized"
    full = json.loads((out / "full_mr_0.01" / "seed_0" / "summary.json").read_text())
    assert full["args"]["mutation_rate"] == 0.01 and full["args"]["variant"] == "full"
    report = (out / "comparison.md").read_text()
    assert "factorized_fr_0.1 vs full_mr_0.01, final loss (paired, n = 2)" in report

"""Statistics of `keras_lrne.comparison` against hand-computed values."""

import csv
import math

import numpy as np
import pytest
from scipy import stats

from keras_lrne import comparison

pytestmark = pytest.mark.backend_independent


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


def test_curve_band_keeps_every_step_and_stays_within_observed_values():
    mean, low, high = comparison.curve_band([[1.0, 2.0, 9.0], [3.0, 4.0]])
    np.testing.assert_allclose(mean, [2.0, 3.0, 9.0])  # not cut to the shortest curve
    # Two runs: the bootstrap means are 1, 2 or 3 (first step): the band is [1, 3].
    np.testing.assert_allclose(low[:2], [1.0, 2.0])
    np.testing.assert_allclose(high[:2], [3.0, 4.0])
    assert low[2] == high[2] == 9.0  # one run reached the last step
    # A band of returns that are all >= 0 never goes below 0 (a t-interval would).
    returns = [[0.0, 0.0], [0.0, 10.0], [0.0, 0.0], [200.0, 0.0]]
    mean, low, high = comparison.curve_band(returns)
    assert (low >= 0).all() and (high <= 200).all() and (low <= mean).all()
    t_low = mean - 3.182 * np.std(returns, axis=0, ddof=1) / 2
    assert (t_low < 0).any()
    one = comparison.curve_band([[1.0, 2.0]])
    np.testing.assert_array_equal(one[1], one[0])


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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


@pytest.mark.backend_independent
def test_paired_tests_match_scipy_and_see_what_unpaired_tests_miss():
    rng = np.random.default_rng(0)
    seeds = rng.normal(size=8) * 5.0  # a large per-seed effect shared by both variants
    a, b = seeds + 1.0 + 0.1 * rng.normal(size=8), seeds + 0.1 * rng.normal(size=8)
    test = comparison.paired_significance(a, b)
    t = stats.ttest_rel(a, b)
    assert test["paired_t"] == pytest.approx(t.statistic)
    assert test["paired_p"] == pytest.approx(t.pvalue)
    assert test["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a - b).pvalue)
    assert test["n"] == 8 and test["mean_difference"] == pytest.approx(np.mean(a - b))
    assert test["paired_p"] < 1e-6 and test["wilcoxon_p"] < 0.01
    assert comparison.significance(a, b)["welch_p"] > 0.5  # seed variation hides it
    # Five pairs: the Wilcoxon test cannot go below 2 / 2^5.
    five = comparison.paired_significance(a[:5], b[:5])
    assert five["wilcoxon_p"] == pytest.approx(0.0625)
    with pytest.raises(ValueError, match="len\\(a\\)=3, len\\(b\\)=2"):
        comparison.paired_significance([1, 2, 3], [1, 2])


@pytest.mark.backend_independent
def test_holm_adjustment_by_hand():
    assert comparison.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert comparison.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    adjusted = comparison.holm([0.02, float("nan"), 0.9])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.9)
    assert comparison.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


@pytest.mark.backend_independent
def test_detectable_difference_has_the_stated_power():
    # Known answer: at the detectable difference the paired t-test rejects 80% of the
    # time (simulation, fixed seed), and the normal approximation is close for large n.
    n, std = 10, 2.0
    delta = comparison.detectable_difference(std, n)
    rng = np.random.default_rng(1)
    d = rng.normal(delta, std, size=(4000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(n))
    rejected = np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1))
    assert abs(rejected - 0.8) < 0.025
    large = comparison.detectable_difference(1.0, 400)
    assert large == pytest.approx((1.959964 + 0.841621) / 20, rel=0.01)
    two = comparison.detectable_difference(1.0, 5, paired=False, n_b=5, std_b=1.0)
    assert two > comparison.detectable_difference(1.0, 5)  # same spread, no pairing
    assert math.isnan(comparison.detectable_difference(1.0, 1))


@pytest.mark.backend_independent
def test_report_pairs_runs_by_seed_and_adjusts_every_comparison():
    runs = [{"label": label, "seed": seed, "loss": value}
            for label, values in (("a", [1.0, 2.0, 3.0, 4.0, 5.0]),
                                  ("b", [1.5, 2.4, 3.6, 4.4, 5.7]),
                                  ("c", [9.0, 1.0, 4.0]))
            for seed, value in zip((0, 1, 2, 3, 4) if label != "c" else (7, 8, 9), values)]
    aggregates = comparison.write_table(runs, "/dev/null", ["loss"])
    text = comparison.markdown_report(runs, aggregates, title="t", metrics=[("loss", "loss")],
                                      tests=[("a", "b"), ("a", "c")])
    paired = comparison.paired_significance([1, 2, 3, 4, 5], [1.5, 2.4, 3.6, 4.4, 5.7])
    unpaired = comparison.significance([1, 2, 3, 4, 5], [9.0, 1.0, 4.0])
    first = comparison.holm([paired["paired_p"], unpaired["welch_p"]])
    assert "a vs b, loss (paired, n = 5)" in text
    assert "a vs c, loss (not paired, n = 5 vs 3)" in text
    assert f"Holm p = {comparison._p_value(first[0])}" in text
    assert "over the 2 comparisons of this report" in text


def test_read_table_gives_back_the_runs_write_table_wrote(tmp_path):
    runs = [{"label": "a", "seed": 0, "loss": 1.5, "val": None},
            {"label": "a", "seed": 1, "loss": 2.5, "val": 3.0},
            {"label": "b", "seed": 0, "loss": float("nan"), "val": 1.0}]
    comparison.write_table(runs, tmp_path / "comparison.csv", ["loss", "val"])
    read, columns = comparison.read_table(tmp_path / "comparison.csv")
    assert columns == ["loss", "val"]
    assert [(r["label"], r["seed"], r["val"]) for r in read] == [
        ("a", 0, None), ("a", 1, 3.0), ("b", 0, 1.0)]
    assert read[0]["loss"] == 1.5 and math.isnan(read[2]["loss"])
    (tmp_path / "other.csv").write_text("label,seed\na,0\n")
    with pytest.raises(ValueError, match=r"path=.*other\.csv"):
        comparison.read_table(tmp_path / "other.csv")


def test_published_reports_carry_the_statistics_of_their_csv():
    """Every docs/results/*/comparison.md tests what its comparison.csv holds, with the
    current tests; `python docs/results/recompute_statistics.py` brings them up to date."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "docs" / "results" / "recompute_statistics.py"
    spec = importlib.util.spec_from_file_location("recompute_statistics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stale = [d for d in sorted(path.parent.glob("*/comparison.csv"))
             if module.updated_report(str(d.parent))[0]
             != module.updated_report(str(d.parent))[1]]
    assert not stale, f"out of date, run {path}: {stale}"
    assert len(list(path.parent.glob("*/comparison.csv"))) >= 6


def _published_runs(name):
    import pathlib

    root = pathlib.Path(__file__).parents[1] / "docs" / "results" / name
    runs, _ = comparison.read_table(root / "comparison.csv")
    return root, runs


def _history_row(path, generation=-1):
    with open(path) as f:
        return list(csv.DictReader(f))[generation]


@pytest.mark.parametrize(
    "name", ["lm_ranks", "mutation_rates", "init", "size_matched", "size_matched_word"])
def test_published_histories_end_at_their_reports_final_values(name):
    """The history.csv published beside a report is the run the report's row came
    from (for lm_ranks, a deterministic re-run of it): its last generation's loss and
    val_loss are the row's final values."""
    root, runs = _published_runs(name)
    assert len(runs) >= 10
    for run in runs:
        last = _history_row(root / run["label"] / f"seed_{run['seed']}" / "history.csv")
        assert int(last["epoch"]) + 1 == run["generations"], run
        assert float(last["loss"]) == pytest.approx(run["final_loss"], abs=1e-6)
        assert float(last["val_loss"]) == pytest.approx(run["final_val_loss"], abs=1e-6)


def test_lm_variants_evolved_runs_are_the_first_200_generations_of_the_ablations():
    """Section 1 of docs/results.md kept no history.csv; its evolved runs are the first
    200 generations of the 500-generation ablation runs of the same seeds (the runs are
    deterministic given their seed), so those histories check it."""
    root, runs = _published_runs("lm_variants")
    longer = {"factorized": "mutation_rates/factorized_fr_0.1",
              "full": "mutation_rates/full_mr_0.01", "small": "size_matched/small"}
    checked = 0
    for run in runs:
        if run["label"] not in longer:
            continue
        row = _history_row(root.parent / longer[run["label"]] / f"seed_{run['seed']}"
                           / "history.csv", int(run["generations"]) - 1)
        assert float(row["loss"]) == pytest.approx(run["final_loss"], abs=1e-5)
        assert float(row["val_loss"]) == pytest.approx(run["final_val_loss"], abs=1e-5)
        checked += 1
    assert checked == 15

"""Statistics and reports for comparisons of runs over several seeds.

`keras-lrne lm|atari|carracing|control --compare --seeds N` runs every variant of a
comparison on every seed and writes, from the runs' own History files,
`comparison.csv` (one row per run, then the mean, standard deviation and 95% confidence
interval of each variant), `comparison.md` (the same as Markdown, with a significance
test between the variants it compares) and `comparison.png` (mean curves with confidence
bands). The functions here are what those files are computed with; they take plain
numbers, so they serve any experiment.
"""

import csv
import math
import warnings

import numpy as np

#: The rows `comparison.csv` holds besides the runs, in order, per variant.
AGGREGATE_ROWS = ("mean", "std", "ci95_low", "ci95_high")


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError as error:  # scipy is a dependency; this names it if it is missing
        raise ImportError("keras_lrne.comparison needs SciPy: `pip install scipy`.") from error
    return stats


def _finite_values(values, name):
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"Received an invalid value for `{name}`, expected at least one "
                         f"number. Received: {name}={values!r}")
    return array[np.isfinite(array)]


def summarize(values, confidence=0.95):
    """The mean, standard deviation and Student-t confidence interval of `values`.

    Non-finite values (a run that failed) are left out and counted in `n_dropped`.

    Args:
        values: The per-seed numbers (a sequence of floats).
        confidence: Confidence level of the interval, in (0, 1). Default: 0.95.

    Returns:
        A dict with `n`, `n_dropped`, `mean`, `std` (sample standard deviation, ddof 1),
        `ci_half_width` (`t_{(1+confidence)/2, n-1} * std / sqrt(n)`), `ci_low` and
        `ci_high`. With fewer than two finite values, `std` and the interval are NaN.

    Example:

    >>> summarize([1.0, 2.0, 3.0])["ci_half_width"]  # 4.303 * 1 / sqrt(3)
    2.484...
    """
    if not 0 < confidence < 1:
        raise ValueError("Received an invalid value for `confidence`, expected a number "
                         f"in (0, 1). Received: confidence={confidence!r}")
    finite = _finite_values(values, "values")
    n = int(finite.size)
    nan = float("nan")
    mean = float(finite.mean()) if n else nan
    std = float(finite.std(ddof=1)) if n > 1 else nan
    half = nan
    if n > 1:
        half = float(_scipy_stats().t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n))
    return {"n": n, "n_dropped": int(np.asarray(values).size - n), "mean": mean,
            "std": std, "ci_half_width": half, "ci_low": mean - half, "ci_high": mean + half}


def significance(a, b):
    """Two-sided tests of whether the samples `a` and `b` differ.

    Args:
        a: Per-seed numbers of the first variant.
        b: Per-seed numbers of the second variant.

    Returns:
        A dict with Welch's unequal-variance t-test (`welch_t`, `welch_p`) and the
        Mann-Whitney U test (`mann_whitney_u`, `mann_whitney_p`; exact, by permutation
        when values tie), both from `scipy.stats`, plus `n_a` and `n_b`. A test that is
        undefined (fewer than two finite values on a side, or no variance at all, or
        none within either sample for Welch's) gives NaN.

    Example:

    >>> significance([3.1, 3.2, 3.0], [3.9, 4.1, 4.0])["welch_p"] < 0.01
    True
    """
    stats = _scipy_stats()
    x, y = _finite_values(a, "a"), _finite_values(b, "b")
    nan = float("nan")
    result = {"n_a": int(x.size), "n_b": int(y.size), "welch_t": nan, "welch_p": nan,
              "mann_whitney_u": nan, "mann_whitney_p": nan}
    if x.size < 2 or y.size < 2:
        return result
    if np.ptp(np.concatenate([x, y])) > 0:
        with warnings.catch_warnings():  # nearly equal samples: SciPy warns, p is ~1
            warnings.simplefilter("ignore", RuntimeWarning)
            welch = stats.ttest_ind(x, y, equal_var=False)
            both = np.concatenate([x, y])
            if np.unique(both).size < both.size and math.comb(both.size, x.size) <= 10**5:
                # Ties: SciPy falls back to the normal approximation, far off at a few
                # seeds per side; the exact permutation distribution is cheap there.
                method = stats.PermutationMethod(n_resamples=np.inf)
            else:
                method = "auto"
            mwu = stats.mannwhitneyu(x, y, alternative="two-sided", method=method)
        if math.isfinite(welch.statistic):  # both samples constant: t is +-inf
            result["welch_t"], result["welch_p"] = float(welch.statistic), float(welch.pvalue)
        result["mann_whitney_u"] = float(mwu.statistic)
        result["mann_whitney_p"] = float(mwu.pvalue)
    return result


def detectable_difference(std, n, *, paired=True, n_b=None, std_b=None, alpha=0.05,
                          power=0.8):
    """The smallest true difference a two-sided t-test detects with probability `power`.

    For the paired t-test, `std` is the standard deviation of the per-seed differences
    and `n` the number of pairs (df `n - 1`, standard error `std / sqrt(n)`); for two
    independent samples, `std`/`n` and `std_b`/`n_b` describe each side (standard error
    `sqrt(std^2/n + std_b^2/n_b)`, df `n + n_b - 2`). Computed exactly from the
    noncentral t distribution, taking the observed standard deviations as the true ones.
    A "no significant difference" means only that the true difference is likely below
    this size.

    Args:
        std: standard deviation of the differences (paired) or of the first sample.
        n: number of pairs (paired) or size of the first sample.
        paired: the paired test (default) or the two-sample test.
        n_b: size of the second sample (two-sample test).
        std_b: standard deviation of the second sample (two-sample test).
        alpha: the test's significance level. Default: 0.05.
        power: the probability of detecting the difference. Default: 0.8.

    Returns:
        The difference, in the units of the data (NaN when undefined: fewer than two
        values per side).

    Example:

    >>> round(detectable_difference(1.0, 10), 2)  # 10 pairs, differences of std 1
    1.0
    """
    stats = _scipy_stats()
    if paired:
        df, se = n - 1, (std / math.sqrt(n) if n > 0 else float("nan"))
    else:
        df = n + n_b - 2
        se = math.sqrt(std**2 / n + std_b**2 / n_b) if n > 0 and n_b > 0 else float("nan")
    if df < 1 or not math.isfinite(se):
        return float("nan")
    if se == 0:
        return 0.0
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(nc):
        reached = stats.nct.sf(critical, df, nc) + stats.nct.cdf(-critical, df, nc)
        return (1.0 if not math.isfinite(reached) else reached) - power

    from scipy.optimize import brentq

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    return float(brentq(shortfall, 0.0, high) * se)


def paired_significance(a, b):
    """Two-sided paired tests of whether `a` and `b` differ, `a[i]` and `b[i]` coming from
    the same seed (the same data and episode seeds): the paired t-test and the Wilcoxon
    signed-rank test, from `scipy.stats`.

    Pairs with a non-finite value on either side are left out.

    Args:
        a: Per-seed numbers of the first variant.
        b: Per-seed numbers of the second variant, in the same seed order.

    Returns:
        A dict with `n` (pairs), `mean_difference` (of `a - b`), `std_difference`,
        `paired_t`, `paired_p`, `wilcoxon_w`, `wilcoxon_p` (exact for small samples;
        with 5 pairs the smallest possible two-sided p is 0.0625), and `detectable`:
        `detectable_difference` of the paired t-test at 80% power and alpha 0.05. NaN
        where a test is undefined (fewer than two pairs, or no variation).

    Example:

    >>> paired_significance([3.1, 3.2, 3.0, 3.3], [3.0, 3.1, 2.8, 3.2])["paired_p"] < 0.01
    True
    """
    stats = _scipy_stats()
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError("Received samples of different sizes for a paired test, expected "
                         f"one value per seed on each side. Received: len(a)={x.size}, "
                         f"len(b)={y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    nan = float("nan")
    n = int(d.size)
    result = {"n": n, "mean_difference": float(d.mean()) if n else nan,
              "std_difference": float(d.std(ddof=1)) if n > 1 else nan,
              "paired_t": nan, "paired_p": nan, "wilcoxon_w": nan, "wilcoxon_p": nan,
              "detectable": nan}
    if n < 2:
        return result
    result["detectable"] = detectable_difference(result["std_difference"], n)
    if not np.any(d != 0):
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if np.ptp(d) > 0:
            t = stats.ttest_rel(x[keep], y[keep])
            result["paired_t"], result["paired_p"] = float(t.statistic), float(t.pvalue)
        else:  # every pair differs by the same amount: t is infinite, p is 0
            result["paired_t"] = math.copysign(math.inf, float(d[0]))
            result["paired_p"] = 0.0
        w = stats.wilcoxon(d, alternative="two-sided")
    result["wilcoxon_w"], result["wilcoxon_p"] = float(w.statistic), float(w.pvalue)
    return result


def holm(p_values):
    """Holm's step-down adjustment of p-values for multiple comparisons.

    The `i`-th smallest of `m` p-values is multiplied by `m - i` (i from 0), then the
    adjusted values are made non-decreasing in that order and capped at 1. Rejecting
    where the adjusted p is below alpha controls the family-wise error rate at alpha.
    NaN p-values (undefined tests) stay NaN and do not count in `m`.

    Args:
        p_values: a sequence of p-values.

    Returns:
        A list of adjusted p-values, in the input order.

    Example:

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    running = 0.0
    for rank, index in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return [float(v) for v in adjusted]


def curve_band(curves, confidence=0.95, resamples=2000, seed=0):
    """The mean curve of several runs and its pointwise bootstrap confidence band.

    Curves of different lengths are not cut to the shortest: at every step the mean and
    band are over the runs that reached it. The band is the bootstrap percentile
    interval of the mean (`resamples` resamples of the runs, a fixed `seed`), so it
    always lies within the values observed at that step (a return band never goes below
    the lowest return, a loss band never below zero).

    Args:
        curves: A list of 1-D sequences (one per seed).
        confidence: Confidence level of the band. Default: 0.95.
        resamples: Bootstrap resamples per step. Default: 2000.
        seed: Seed of the resampling. Default: 0.

    Returns:
        `(mean, low, high)` numpy arrays as long as the longest curve; where one run
        reached a step, `low` and `high` equal `mean` there.

    Example:

    >>> mean, low, high = curve_band([[1.0, 2.0, 9.0], [3.0, 4.0]])
    >>> mean.tolist()
    [2.0, 3.0, 9.0]
    """
    length = max(len(c) for c in curves)
    stack = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        stack[i, : len(c)] = np.asarray(c, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # steps no run reached
        mean = np.nanmean(stack, axis=0)
    low, high = mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    tail = (1 - confidence) / 2 * 100
    for step in range(length):
        values = stack[:, step][np.isfinite(stack[:, step])]
        if values.size < 2:
            continue
        means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
        low[step], high[step] = np.percentile(means, [tail, 100 - tail])
    return mean, low, high


def _format(value, digits=3):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (int, np.integer)) or (digits <= 1 and float(value).is_integer()):
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def _p_value(p):
    if not math.isfinite(p):
        return "-"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def write_table(runs, path, columns):
    """Writes `comparison.csv`: one row per run, then `AGGREGATE_ROWS` per label (their
    `n` counts the runs with a finite value of the first column: failed runs are left
    out of every aggregate, and the Markdown report says how many failed).

    Args:
        runs: A list of dicts with `label`, `seed` and a value for every column.
        path: The CSV path.
        columns: The numeric columns, in order.

    Returns:
        `{label: {column: summarize(...)}}`, the aggregates written.
    """
    labels = list(dict.fromkeys(run["label"] for run in runs))
    aggregates = {}
    rows = []
    for label in labels:
        members = [run for run in runs if run["label"] == label]
        for run in members:
            rows.append({"variant": label, "row": "run", "seed": run["seed"], "n": 1,
                         **{c: run.get(c) for c in columns}})
        aggregates[label] = {}
        for column in columns:
            values = [run.get(column) for run in members]
            if any(v is None for v in values):
                continue
            aggregates[label][column] = summarize(values)
        first = aggregates[label].get(columns[0])
        n = first["n"] if first else len(members)  # runs with a finite result
        for name, key in zip(AGGREGATE_ROWS, ("mean", "std", "ci_low", "ci_high")):
            rows.append({"variant": label, "row": name, "seed": "", "n": n,
                         **{c: aggregates[label][c][key] if c in aggregates[label] else None
                            for c in columns}})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["variant", "row", "seed", "n", *columns])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return aggregates


def read_table(path):
    """Reads a `comparison.csv` back: its per-run rows and its columns.

    The inverse of `write_table` for the runs (the aggregate rows are recomputed by
    `summarize`, so they are skipped), so that the statistics of a published comparison
    can be recomputed from its CSV alone.

    Args:
        path: A `comparison.csv` written by `write_table`.

    Returns:
        `(runs, columns)`: a list of dicts with `label`, `seed` (an int) and every numeric
        column (a float, or None where the cell is empty), in file order; and the numeric
        columns in file order.

    Example:

    >>> runs, columns = read_table("docs/results/frostbite/comparison.csv")  # doctest: +SKIP
    >>> sorted({run["label"] for run in runs})  # doctest: +SKIP
    ['factorized', 'full', 'small']
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or ())
        if header[:4] != ["variant", "row", "seed", "n"]:
            raise ValueError("Received an invalid value for `path`, expected a "
                             "comparison.csv whose columns start with variant, row, seed, "
                             f"n. Received: path={path!r} with columns {header}")
        columns = header[4:]
        runs = []
        for row in reader:
            if row["row"] != "run":
                continue
            run = {"label": row["variant"], "seed": int(row["seed"])}
            for column in columns:
                run[column] = float(row[column]) if row[column] != "" else None
            runs.append(run)
    return runs, columns


def markdown_report(runs, aggregates, *, title, metrics, extra_columns=(), tests=(),
                    notes=()):
    """The `comparison.md` text: aggregate table, per-run table, significance tests.

    Args:
        runs: The per-run dicts (as for `write_table`).
        aggregates: `write_table`'s result.
        title: A heading line.
        metrics: `[(column, heading)]` reported as mean ± 95% CI (the first is tested).
        extra_columns: `[(column, heading)]` (or `(column, heading, digits)`) reported as
            means, with 1 decimal unless `digits` is given.
        tests: `[(label_a, label_b)]` pairs compared on every metric: with
            `paired_significance` (paired t-test, Wilcoxon signed-rank) when both variants
            ran the same seeds once each (seeds share data and episode seeds, so runs
            pair), else with `significance` (Welch's t-test, Mann-Whitney U). All tests
            are two-sided; each test's p-values are Holm-adjusted over every comparison of
            the report, and each comparison gives the difference its t-test detects at
            80% power.
        notes: Lines appended at the end (baselines, budgets).

    Returns:
        The Markdown text.
    """
    lines = [f"# {title}", ""]
    head = ["variant", "seeds"] + [f"{h} (mean ± 95% CI)" for _, h in metrics]
    head += [f"{h} (std)" for _, h in metrics[:1]] + [e[1] for e in extra_columns]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, columns in aggregates.items():
        n = sum(run["label"] == label for run in runs)
        first = columns.get(metrics[0][0])
        failed = first["n_dropped"] if first else 0
        cells = [label, f"{n - failed} ({failed} failed)" if failed else str(n)]
        for column, _ in metrics:
            s = columns.get(column)
            if s is None:
                cells.append("-")
            elif math.isfinite(s["ci_half_width"]):
                cells.append(f"{_format(s['mean'])} ± {_format(s['ci_half_width'])}")
            else:
                cells.append(_format(s["mean"]))
        first = columns.get(metrics[0][0])
        cells.append(_format(first["std"]) if first else "-")
        for column, *rest in extra_columns:
            s = columns.get(column)
            cells.append(_format(s["mean"], rest[1] if len(rest) > 1 else 1) if s else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per run:", ""]
    head = ["variant", "seed"] + [h for _, h in metrics] + [e[1] for e in extra_columns]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for run in runs:
        cells = [run["label"], str(run["seed"])]
        cells += [_format(run.get(c)) for c, _ in metrics]
        cells += [_format(run.get(e[0]), e[2] if len(e) > 2 else 1) for e in extra_columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += significance_section(runs, metrics, tests)
    if notes:
        lines += [""] + list(notes)
    return "\n".join(lines) + "\n"


def _pairing(runs, a, b, column):
    """`(values_a, values_b, paired)` of `column` for labels `a` and `b`, in seed order
    when both ran the same seeds once each (paired), else in run order."""
    runs_a = [r for r in runs if r["label"] == a]
    runs_b = [r for r in runs if r["label"] == b]
    seeds_a, seeds_b = [r["seed"] for r in runs_a], [r["seed"] for r in runs_b]
    if (sorted(seeds_a) == sorted(seeds_b) and len(set(seeds_a)) == len(seeds_a)
            and len(seeds_a) > 0):
        by_seed = {r["seed"]: r for r in runs_b}
        return ([r.get(column) for r in runs_a],
                [by_seed[r["seed"]].get(column) for r in runs_a], True)
    return [r.get(column) for r in runs_a], [r.get(column) for r in runs_b], False


def significance_section(runs, metrics, tests):
    """The significance section of `markdown_report`, as Markdown lines.

    Every pair of `tests` is compared on every metric (paired when both labels ran the
    same seeds once each), and each test's p-values are Holm-adjusted over all the
    comparisons of the section.

    Args:
        runs: The per-run dicts (`label`, `seed` and the metric columns), e.g. from
            `read_table`.
        metrics: `[(column, heading)]` to test.
        tests: `[(label_a, label_b)]` pairs to compare.

    Returns:
        A list of lines (starting with an empty one), or `[]` when nothing is tested.

    Example:

    >>> runs, _ = read_table("docs/results/lm_variants/comparison.csv")  # doctest: +SKIP
    >>> print("\n".join(significance_section(
    ...     runs, [("final_loss", "final loss")], [("factorized", "full")])))  # doctest: +SKIP
    """
    comparisons = []
    for a, b in tests:
        for column, heading in metrics:
            values_a, values_b, paired = _pairing(runs, a, b, column)
            if not values_a or not values_b or None in values_a + values_b:
                continue
            if paired:
                test = paired_significance(values_a, values_b)
                enough = test["n"] >= 2
                p = (test["paired_p"], test["wilcoxon_p"])
            else:
                test = significance(values_a, values_b)
                enough = test["n_a"] >= 2 and test["n_b"] >= 2
                p = (test["welch_p"], test["mann_whitney_p"])
            comparisons.append((a, b, heading, paired, test, enough, p, values_a, values_b))
    if not comparisons:
        return []
    usable = [c for c in comparisons if c[5]]
    first = holm([c[6][0] for c in usable])
    second = holm([c[6][1] for c in usable])
    adjusted = {id(c): (f, s) for c, f, s in zip(usable, first, second)}
    any_paired = any(c[3] for c in comparisons)
    any_unpaired = any(not c[3] for c in comparisons)
    kinds = []
    if any_paired:
        kinds.append("paired by seed (both variants ran the same seeds, which share data "
                     "and episode seeds): the paired t-test and the Wilcoxon signed-rank "
                     "test")
    if any_unpaired:
        kinds.append("not paired (different seeds): Welch's t-test and the Mann-Whitney U "
                     "test")
    lines = ["", "Significance: two-sided tests (scipy.stats), " + "; ".join(kinds) + ". "
             f"Holm-adjusted p-values (over the {len(usable)} comparisons of this report, "
             "each test separately) are given after the raw ones as `Holm p`. "
             "`detectable` is the smallest true difference the t-test finds with 80% "
             "power at alpha = 0.05: a non-significant result only says the difference "
             "is likely smaller than that.", ""]
    for comparison in comparisons:
        a, b, heading, paired, test, enough, _, values_a, values_b = comparison
        if not enough:
            have = test["n"] if paired else f"{test['n_a']} and {test['n_b']}"
            lines.append(f"- {a} vs {b}, {heading}: needs at least 2 seeds per variant "
                         f"(have {have}).")
            continue
        holm_first, holm_second = adjusted[id(comparison)]
        if paired:
            lines.append(
                f"- {a} vs {b}, {heading} (paired, n = {test['n']}): mean difference "
                f"{_format(test['mean_difference'])}; paired t = "
                f"{_format(test['paired_t'], 2)}, p = {_p_value(test['paired_p'])}, Holm p "
                f"= {_p_value(holm_first)}; Wilcoxon W = {_format(test['wilcoxon_w'], 1)}, "
                f"p = {_p_value(test['wilcoxon_p'])}, Holm p = {_p_value(holm_second)}; "
                f"detectable {_format(test['detectable'])}."
            )
        else:
            x, y = _finite_values(values_a, "a"), _finite_values(values_b, "b")
            detectable = detectable_difference(
                float(x.std(ddof=1)), int(x.size), paired=False, n_b=int(y.size),
                std_b=float(y.std(ddof=1)))
            lines.append(
                f"- {a} vs {b}, {heading} (not paired, n = {test['n_a']} vs "
                f"{test['n_b']}): mean difference {_format(float(x.mean() - y.mean()))}; "
                f"Welch's t = {_format(test['welch_t'], 2)}, p = "
                f"{_p_value(test['welch_p'])}, Holm p = {_p_value(holm_first)}; "
                f"Mann-Whitney U = {_format(test['mann_whitney_u'], 1)}, p = "
                f"{_p_value(test['mann_whitney_p'])}, Holm p = {_p_value(holm_second)}; "
                f"detectable {_format(detectable)}."
            )
    return lines

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


def curve_band(curves, confidence=0.95):
    """The mean curve of several runs and its pointwise confidence band.

    Args:
        curves: A list of 1-D sequences (one per seed); they are cut to the shortest.
        confidence: Confidence level of the band. Default: 0.95.

    Returns:
        `(mean, low, high)` numpy arrays; `low` and `high` equal `mean` for one curve.
    """
    length = min(len(c) for c in curves)
    stack = np.asarray([np.asarray(c, dtype=np.float64)[:length] for c in curves])
    mean = stack.mean(axis=0)
    if len(stack) < 2:
        return mean, mean, mean
    half = (_scipy_stats().t.ppf((1 + confidence) / 2, len(stack) - 1)
            * stack.std(axis=0, ddof=1) / math.sqrt(len(stack)))
    return mean, mean - half, mean + half


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


def markdown_report(runs, aggregates, *, title, metrics, extra_columns=(), tests=(),
                    notes=()):
    """The `comparison.md` text: aggregate table, per-run table, significance tests.

    Args:
        runs: The per-run dicts (as for `write_table`).
        aggregates: `write_table`'s result.
        title: A heading line.
        metrics: `[(column, heading)]` reported as mean ± 95% CI (the first is tested).
        extra_columns: `[(column, heading)]` reported as means.
        tests: `[(label_a, label_b)]` pairs compared with `significance` on every metric.
        notes: Lines appended at the end (baselines, budgets).

    Returns:
        The Markdown text.
    """
    lines = [f"# {title}", ""]
    head = ["variant", "seeds"] + [f"{h} (mean ± 95% CI)" for _, h in metrics]
    head += [f"{h} (std)" for _, h in metrics[:1]] + [h for _, h in extra_columns]
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
        for column, _ in extra_columns:
            s = columns.get(column)
            cells.append(_format(s["mean"], 1) if s else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per run:", ""]
    head = ["variant", "seed"] + [h for _, h in metrics] + [h for _, h in extra_columns]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for run in runs:
        cells = [run["label"], str(run["seed"])]
        cells += [_format(run.get(c)) for c, _ in metrics]
        cells += [_format(run.get(c), 1) for c, _ in extra_columns]
        lines.append("| " + " | ".join(cells) + " |")
    if tests:
        lines += ["", "Significance (two-sided; Welch's t-test and Mann-Whitney U, "
                  "scipy.stats):", ""]
    for a, b in tests:
        for column, heading in metrics:
            values_a = [r.get(column) for r in runs if r["label"] == a]
            values_b = [r.get(column) for r in runs if r["label"] == b]
            if not values_a or not values_b or None in values_a + values_b:
                continue
            test = significance(values_a, values_b)
            if test["n_a"] < 2 or test["n_b"] < 2:
                lines.append(f"- {a} vs {b}, {heading}: needs at least 2 seeds per variant "
                             f"(have {test['n_a']} and {test['n_b']}).")
                continue
            lines.append(
                f"- {a} vs {b}, {heading}: Welch's t = {_format(test['welch_t'], 2)}, "
                f"p = {_p_value(test['welch_p'])}; Mann-Whitney U = "
                f"{_format(test['mann_whitney_u'], 1)}, p = "
                f"{_p_value(test['mann_whitney_p'])} (n = {test['n_a']} vs {test['n_b']})."
            )
    if notes:
        lines += [""] + list(notes)
    return "\n".join(lines) + "\n"

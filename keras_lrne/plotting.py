"""Loss-curve plots of `evolve()` histories (matplotlib, headless, no pyplot state)."""

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]


def plot_histories(histories, path, title="keras-lrne", keys=("loss", "val_loss"),
                   ylabel="loss (cross-entropy, lower is better)", baselines=None):
    """Plots one or more `History.history` dicts per generation and saves a PNG.

    Uses a bare `matplotlib.figure.Figure`, so it never changes the user's pyplot backend.

    Args:
        histories: `{label: history_dict}`; each dict maps log keys to per-generation lists.
        path: output PNG path.
        title: figure title.
        keys: log keys to draw; the first solid, others dashed.
        ylabel: y-axis label.
        baselines: optional `{label: value}` drawn as horizontal dotted lines (e.g. a
            language model's uniform and unigram losses).

    Returns:
        The path written.

    Example:

    >>> plot_histories({"factorized": history.history}, "loss.png")
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for i, (label, history) in enumerate(histories.items()):
        color = _COLORS[i % len(_COLORS)]
        for key in keys:
            values = history.get(key)
            if not values:
                continue
            style = "-" if key == keys[0] else "--"
            name = label if len(keys) == 1 else f"{label} {key}"
            ax.plot(range(1, len(values) + 1), values, style, color=color, label=name)
    for i, (label, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, linestyle=":", color="0.35" if i % 2 else "0.6",
                   label=f"{label} ({value:.2f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # generations are whole
    ax.set_xlabel("generation")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _proportional(runs):
    """Whether every run's right-panel x is the generation index times a constant (the
    right panel would repeat the left one, e.g. fixed-length episodes)."""
    for run in runs:
        x = np.asarray(run[1], dtype=np.float64)
        if not run[2] or x.size == 0 or x[0] <= 0:
            return False
        if not np.allclose(x, x[0] * np.arange(1, x.size + 1), rtol=1e-9):
            return False
    return True


def plot_comparison(groups, path, title="keras-lrne comparison", ylabel="loss",
                    xlabel_right="wall time (s)", baselines=None, final_label=None):
    """Plots the mean curve of each variant over seeds with a 95% confidence band, and
    every seed's final value.

    Panels: the metric against generations; against `xlabel_right` (member-tokens or
    environment steps), left out when it would repeat the first panel (every run's x is
    proportional to the generation); and a strip plot of each seed's final value per
    variant (a short line marks the mean), which stays readable with many variants.
    Curves are not cut to the shortest seed: each step averages the seeds that reached
    it. Bands are bootstrap percentile intervals of the mean
    (`keras_lrne.comparison.curve_band`), so they stay within the observed values.

    Args:
        groups: `{label: [(values, x_right, per_generation[, val_values]), ...]}`, one
            tuple per seed: the metric per step, the right panel's x per step, whether
            the steps are generations (runs trained by gradients are drawn on the right
            only) and, optionally, a validation metric per step (drawn dashed).
        path: output PNG path.
        title: figure title.
        ylabel: y-axis label.
        xlabel_right: the right panel's x-axis label.
        baselines: optional `{label: value}` drawn as horizontal dotted lines (uniform
            and unigram losses, random and human scores, a paper's result).
        final_label: the strip panel's y label (default: "final " + `ylabel`).

    Returns:
        The path written.

    Example:

    >>> plot_comparison({"factorized": [(loss, tokens, True)]}, "comparison.png")
    """
    from keras_lrne.comparison import curve_band

    runs_all = [r for runs in groups.values() for r in runs]
    two_curves = not _proportional(runs_all)
    fig = Figure(figsize=(15 if two_curves else 11, 4.5))
    axes = fig.subplots(1, 3 if two_curves else 2,
                        gridspec_kw={"width_ratios": [3, 3, 2] if two_curves else [3, 2]})
    left, strip = axes[0], axes[-1]
    right = axes[1] if two_curves else None
    for i, (label, runs) in enumerate(groups.items()):
        color = _COLORS[i % len(_COLORS)]
        name = f"{label} (n={len(runs)})"
        evolved = all(r[2] for r in runs)
        series = [([r[0] for r in runs], "-", name)]
        if all(len(r) > 3 and r[3] is not None and len(r[3]) for r in runs):
            series.append(([r[3] for r in runs], "--", f"{label} val"))
        x_mean, _, _ = curve_band([r[1] for r in runs])
        for values, style, legend in series:
            mean, low, high = curve_band(values)
            if evolved:
                steps = np.arange(1, len(mean) + 1)
                left.plot(steps, mean, style, color=color, label=legend)
                left.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
            if right is not None:
                length = min(len(x_mean), len(mean))
                right.plot(x_mean[:length], mean[:length],
                           style if evolved else "--.", color=color, label=legend)
                right.fill_between(x_mean[:length], low[:length], high[:length],
                                   color=color, alpha=0.15, linewidth=0)
        finals = np.asarray([r[0][-1] for r in runs], dtype=np.float64)
        jitter = np.linspace(-0.15, 0.15, len(finals)) if len(finals) > 1 else np.zeros(1)
        strip.plot(i + jitter, finals, "o", color=color, alpha=0.8)
        strip.hlines(np.nanmean(finals), i - 0.3, i + 0.3, color=color)
    for ax in (left, right):
        if ax is None:
            continue
        for i, (label, value) in enumerate((baselines or {}).items()):
            ax.axhline(value, linestyle=":", color="0.35" if i % 2 else "0.6",
                       label=f"{label} ({value:,.2f})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for i, value in enumerate((baselines or {}).values()):
        strip.axhline(value, linestyle=":", color="0.35" if i % 2 else "0.6")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("generation")
    left.set_ylabel(ylabel)
    if right is not None:
        right.set_xlabel(xlabel_right)
        right.sharey(left)
    else:  # the right x is generations times one constant: a second scale on top
        per_step = {float(np.asarray(r[1], dtype=np.float64)[0]) for r in runs_all}
        if len(per_step) == 1:
            k = per_step.pop()
            top = left.secondary_xaxis("top", functions=(lambda g: g * k, lambda t: t / k))
            top.set_xlabel(xlabel_right, fontsize=8)
    strip.set_xticks(range(len(groups)))
    strip.set_xticklabels(list(groups), rotation=30, ha="right", fontsize=8)
    strip.set_ylabel(final_label or f"final {ylabel}")
    strip.set_title("per seed (line: mean)", fontsize=9)
    strip.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{title} (mean over the seeds that reached each step; shaded: 95% "
                 "bootstrap interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path

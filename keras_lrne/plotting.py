"""Loss-curve plots of `evolve()` histories (matplotlib, headless, no pyplot state)."""

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


def plot_comparison(groups, path, title="keras-lrne comparison", ylabel="loss",
                    xlabel_right="wall time (s)", baselines=None):
    """Plots the mean curve of each variant over seeds with a 95% confidence band.

    The left panel is against generations, the right one against `xlabel_right` (wall
    time or environment steps). Uses a bare `matplotlib.figure.Figure`.

    Args:
        groups: `{label: [(values, x_right, per_generation), ...]}`, one tuple per seed:
            the metric per step, the right panel's x per step, and whether the steps
            are generations (runs trained by gradients are drawn on the right only).
        path: output PNG path.
        title: figure title.
        ylabel: y-axis label.
        xlabel_right: the right panel's x-axis label.
        baselines: optional `{label: value}` drawn as horizontal dotted lines.

    Returns:
        The path written.

    Example:

    >>> plot_comparison({"factorized": [(loss, seconds, True)]}, "comparison.png")
    """
    from keras_lrne.comparison import curve_band

    fig = Figure(figsize=(11, 4.5))
    left, right = fig.subplots(1, 2, sharey=True)
    for i, (label, runs) in enumerate(groups.items()):
        color = _COLORS[i % len(_COLORS)]
        values = [r[0] for r in runs]
        mean, low, high = curve_band(values)
        name = f"{label} (n={len(runs)})"
        if all(r[2] for r in runs):
            steps = range(1, len(mean) + 1)
            left.plot(steps, mean, color=color, label=name)
            left.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
        x_mean, _, _ = curve_band([r[1] for r in runs])
        length = min(len(x_mean), len(mean))
        style = "-" if all(r[2] for r in runs) else "--."
        right.plot(x_mean[:length], mean[:length], style, color=color, label=name)
        right.fill_between(x_mean[:length], low[:length], high[:length], color=color,
                           alpha=0.2, linewidth=0)
    for ax in (left, right):
        for i, (label, value) in enumerate((baselines or {}).items()):
            ax.axhline(value, linestyle=":", color="0.35" if i % 2 else "0.6",
                       label=f"{label} ({value:.2f})")
        ax.grid(alpha=0.3)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("generation")
    left.set_ylabel(ylabel)
    right.set_xlabel(xlabel_right)
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(f"{title} (mean, shaded: 95% confidence interval over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path

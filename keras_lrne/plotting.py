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

"""Loss-curve plots of `evolve()` histories (matplotlib, headless)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_histories(histories, path, title="keras-lrne", keys=("loss", "val_loss")):
    """Plots one or more `History.history` dicts per generation and saves a PNG.

    Args:
        histories: `{label: history_dict}`; each dict maps log keys to per-generation lists.
        path: output PNG path.
        title: figure title.
        keys: log keys to draw; `loss` solid, others dashed.

    Returns:
        The path written.

    Example:

    >>> plot_histories({"factorized": history.history}, "loss.png")
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (label, history) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4,
                                       histories.items()):
        for key in keys:
            values = history.get(key)
            if not values:
                continue
            style = "-" if key == "loss" else "--"
            name = label if len(keys) == 1 else f"{label} {key}"
            ax.plot(range(1, len(values) + 1), values, style, color=color, label=name)
    ax.set_xlabel("generation")
    ax.set_ylabel("loss (cross-entropy, lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

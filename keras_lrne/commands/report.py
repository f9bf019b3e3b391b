"""The report of a comparison: from the runs' `history.csv` files to
`comparison.csv`, `comparison.md` and `comparison.png`.

Everything here reads finished runs' files and writes the report; nothing evolves, so
the report can be checked on small synthetic histories. The statistics themselves are
`keras_lrne.comparison`'s.
"""

import math
import os
import time

import numpy as np

from keras_lrne.commands.run_directory import read_history


def run_record(command, label, seed, output, summary, match="tokens"):
    """A comparison row and curve, computed from the run's `history.csv`.

    Args:
        command: "lm", or an environment command ("atari", "carracing", "control").
        label: The run's label in the comparison (e.g. "factorized", "rank_4",
            "factorized_fit").
        seed: The run's seed.
        output: The run's directory, holding `history.csv`.
        summary: The run's summary (`summary.json`'s "summary").
        match: For a fit() run, where it is read: at the first measurement that reached
            the evolved run's member-tokens (`"tokens"`, compute-matched) or its wall
            time (`"time"`).

    Returns:
        `(row, curve)`: the row of `comparison.csv` (a dict), and
        `(values, x, evolved, val_values)` with the metric per generation (or per fit()
        stretch), its x-axis (cumulative member-tokens for the LM, environment steps
        otherwise: compute, not wall time on a shared machine), whether the run was
        evolved (False for a fit() run) and the validation loss per step (LM runs with
        validation data; else None).
    """
    history = read_history(os.path.join(output, "history.csv"))
    needed = ["loss", "generation_seconds"] if "elapsed_seconds" not in history else []
    if command == "lm" and "elapsed_seconds" not in history:
        needed.append("member_tokens_per_generation")
    missing = [k for k in needed if k not in history and k not in summary]
    if not history.get("loss") or missing:
        raise ValueError(
            f"The finished run in {output!r} lacks what a comparison reads "
            f"({', '.join(missing) or 'no generation logged'}); it was made by an older "
            "keras-lrne or its history.csv was cut. Pass --overwrite to run it again.")
    row = {"label": label, "seed": seed, "parameters": summary["parameters"]}
    val = history.get("val_loss")
    best_val = float(np.nanmin(val)) if val else None
    if "elapsed_seconds" in history:  # trained by fit()
        if match == "tokens" and "budget_member_tokens" not in summary:
            raise ValueError(
                f"The fit() run in {output!r} has no token budget (budget_member_tokens): "
                "it was made by an older keras-lrne, which matched wall time only. Pass "
                "--overwrite to run it again.")
        if match == "tokens":
            reached, goal = history["member_tokens"], summary["budget_member_tokens"]
        else:
            reached, goal = history["elapsed_seconds"], summary["budget_seconds"]
        end = next((i for i, v in enumerate(reached) if v >= goal), len(reached) - 1) + 1
        history = {k: v[:end] for k, v in history.items()}
        val = history.get("val_loss")
        row.update(final_loss=history["loss"][-1],
                   final_val_loss=val[-1] if val else None,
                   best_val_loss=float(np.nanmin(val)) if val else None,
                   wall_seconds=history["elapsed_seconds"][-1],
                   member_tokens=int(history["member_tokens"][-1]), generations=None)
        return row, (history["loss"], history["member_tokens"], False, val)
    generations = len(history["loss"])
    times = np.cumsum(history["generation_seconds"])
    row["generations"] = generations
    row["wall_seconds"] = float(times[-1]) if generations else 0.0
    if command == "lm":
        per_generation = summary["member_tokens_per_generation"]
        row.update(final_loss=history["loss"][-1],
                   final_val_loss=val[-1] if val else None, best_val_loss=best_val,
                   member_tokens=generations * per_generation)
        tokens = per_generation * np.arange(1, generations + 1)
        return row, (history["loss"], tokens, True, val)
    steps = np.cumsum(history["env_steps"])
    row.update(final_episode_return=history["episode_return"][-1],
               env_steps=int(steps[-1]))
    if "first_stage_seconds" in history:
        row["first_stage_seconds"] = float(sum(history["first_stage_seconds"]))
    return row, (history["episode_return"], steps, True, None)


def tested_pairs(compare, labels):
    """The pairs of labels a comparison's report tests against each other.

    Args:
        compare: The comparison's kind ("variants", "ranks", "strategies",
            "mutation-rates", "init", "size-matched" or None).
        labels: The labels the comparison ran, in the order it ran them, `*_fit` rows
            included.

    Returns:
        A list of `(label, label)` pairs, both present in `labels`.
    """
    if compare == "variants":
        pairs = [("factorized", "full"), ("factorized", "small")]
    elif compare == "ranks":
        pairs = [(label, "full") for label in labels if label.startswith("rank_")]
    elif compare == "strategies":
        # The first of --strategies against each of the others (default: GA vs OpenES).
        runs = [label for label in labels if not label.endswith("_fit")]
        pairs = [(runs[0], label) for label in runs[1:]]
    elif compare == "mutation-rates":
        full = [label for label in labels if label.startswith("full_mr_")]
        factorized = [label for label in labels if label.startswith("factorized_fr_")]
        # Each rate against its model's paper rate (full 0.01; factors sqrt(0.01)):
        # does the step size matter within a model?
        pairs = [(label, "full_mr_0.01") for label in full if label != "full_mr_0.01"]
        pairs += [(label, "factorized_fr_0.1") for label in factorized
                  if label != "factorized_fr_0.1"]
        # Every factorized rate against every full rate: which step sizes decide it.
        pairs += [(a, b) for a in factorized for b in full]
    elif compare == "init":
        pairs = [("factorized_paper", "full_paper"), ("factorized_scaled", "full_scaled"),
                 ("full_scaled", "full_paper"), ("factorized_scaled", "factorized_paper")]
    elif compare == "size-matched":
        pairs = [("factorized_r1_e4", "small")]
    else:
        pairs = []
    pairs += [(label, f"{label}_fit") for label in labels if f"{label}_fit" in labels
              and label in ("factorized", "full")]
    return [(a, b) for a, b in pairs if a in labels and b in labels]


def paired_ratio_notes(records, column, what):
    """Lines giving `column` of factorized over full, paired by seed, with a 95% CI."""
    from keras_lrne import comparison

    by_seed = {}
    for record in records:
        if record["label"] in ("factorized", "full") and record.get(column):
            by_seed.setdefault(record["seed"], {})[record["label"]] = record[column]
    ratios = [v["factorized"] / v["full"] for v in by_seed.values() if len(v) == 2]
    if not ratios:
        return []
    s = comparison.summarize(ratios)
    interval = (f" ± {s['ci_half_width']:.3f} (95% CI)"
                if math.isfinite(s["ci_half_width"]) else "")
    return [f"{what.capitalize()} of factorized over full, paired by seed: "
            f"{s['mean']:.3f}{interval} over {s['n']} seed(s) "
            f"({', '.join(f'{r:.3f}' for r in ratios)})."]


def machine():
    """The machine and software a report was made on, in one line."""
    import platform

    import keras

    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()}-core {cpu} CPU, Python {platform.python_version()}, Keras "
            f"{keras.__version__} on {keras.config.backend()}")


def _finished_span(run_dirs):
    """When the runs finished: the first and last `history.csv` times, in UTC."""
    times = [os.path.getmtime(os.path.join(path, "history.csv")) for path in run_dirs]
    return " to ".join(dict.fromkeys(
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) for t in (min(times), max(times))))


#: The paper's CarRacing result, read from its figure (about 730 after stage 2).
CARRACING_PAPER_RETURN = 730.0


def reference_lines(args):
    """The horizontal reference lines of a comparison's plot: random and human scores
    for the Atari games listed in `keras_lrne.playback.ATARI_REFERENCES`, the paper's
    ~730 for CarRacing; None for others (the LM's uniform and unigram lines are added
    by `write_report`)."""
    from keras_lrne.playback import ATARI_REFERENCES

    if args.command == "atari":
        game = str(getattr(args, "game", "")).lower().split("/")[-1].split("-")[0]
        if game in ATARI_REFERENCES:
            random_score, human = ATARI_REFERENCES[game]
            return {"random": random_score, "human": human}
    if args.command == "carracing":
        return {"paper (about)": CARRACING_PAPER_RETURN}
    return None


def write_report(args, argv, records, curves, summaries, run_dirs):
    """Writes `comparison.csv`, `comparison.md` and `comparison.png` into `args.output`.

    Args:
        args: The comparison's arguments (`command`, `compare`, `output`, `variant`,
            `strategy`, `population`, `parents`, `generations`; for the LM also
            `with_fit` and `fit_learning_rate`).
        argv: The command line, quoted in the report.
        records: The runs' rows (`run_record`), evolved and fit() runs.
        curves: `{label: [curve, ...]}` (`run_record`), in the order of the report.
        summaries: The evolved runs' summaries (for the LM baselines).
        run_dirs: The evolved runs' directories (for the date they finished).

    Returns:
        The text of `comparison.md`.
    """
    from keras_lrne import checkpoint, comparison
    from keras_lrne.plotting import plot_comparison

    records = sorted(records, key=lambda r: list(curves).index(r["label"]))
    lm = args.command == "lm"
    metric = "final_loss" if lm else "final_episode_return"
    columns = [metric] + (["final_val_loss", "best_val_loss"] if lm else [])
    held_out = not lm and any(r.get("heldout_return") is not None for r in records)
    if held_out:
        columns.append("heldout_return")
        if any(r.get("heldout_hns") is not None for r in records):
            columns.append("heldout_hns")
    columns += ["wall_seconds", "member_tokens" if lm else "env_steps"]
    if any("first_stage_seconds" in r for r in records):
        columns.append("first_stage_seconds")
    columns += ["parameters", "generations"]
    for record in records:
        for column in columns:
            record.setdefault(column, None)
    aggregates = comparison.write_table(records, os.path.join(args.output, "comparison.csv"),
                                        columns)
    labels = list(curves)
    metrics = ([("final_loss", "final loss")] if lm
               else [(metric, "final elite return (training episodes)")])
    if held_out:
        metrics.append(("heldout_return", "held-out return"))
    if lm and any(r["final_val_loss"] is not None for r in records):
        metrics.append(("final_val_loss", "final val_loss"))
        metrics.append(("best_val_loss", "best val_loss"))
    extra = [("wall_seconds", "wall s"),
             ("member_tokens", "member-tokens") if lm else ("env_steps", "env steps")]
    if "first_stage_seconds" in columns:
        extra.append(("first_stage_seconds", "stage-1 s"))
    extra.append(("parameters", "parameters"))
    compared = tuple(getattr(args, "strategies", ("ga", "es")))
    notes = [f"Command: `keras-lrne {' '.join(argv)}`; runs finished "
             f"{_finished_span(run_dirs)}; {machine()}.",
             f"Budget per run: population {args.population}, {args.parents} parents, "
             f"{args.generations} generations, strategy "
             f"{' and '.join(compared) if args.compare == 'strategies' else args.strategy}."]
    notes += paired_ratio_notes(records, "first_stage_seconds", "stage-1 time")
    if not lm:
        notes.append("`final elite return (training episodes)`: the best member's return "
                     "on the last generation's training episodes, a maximum over the "
                     "population and so biased upwards by selection."
                     + (" `held-out return`: the final elite played on new episodes "
                        "(`keras-lrne evaluate`, seed 0: reset seeds the run never trained "
                        "on; Atari with random no-op starts), the unbiased estimate."
                        if held_out else ""))
    if "heldout_hns" in columns:
        extra.insert(0, ("heldout_hns", "held-out human-normalised", 3))
    baselines = reference_lines(args)
    if lm:
        baselines = {"uniform (ln V)": float(np.mean([s["uniform_loss"] for s in summaries])),
                     "unigram": float(np.mean([s["unigram_loss"] for s in summaries]))}
        notes.append(f"Baselines (nats per token, mean over seeds): uniform ln V = "
                     f"{baselines['uniform (ln V)']:.3f}, unigram = "
                     f"{baselines['unigram']:.3f}.")
        if getattr(args, "with_fit", False):
            notes.append(f"`*_fit` rows: the same model trained by `fit()` with Adam "
                         f"(learning rate {args.fit_learning_rate}) on the same seed, read "
                         "when it had processed as many tokens as its evolved run's "
                         "member-tokens (compute-matched); `*_fit_time` rows: the same "
                         "fit() run read at its evolved run's wall time (time on a shared "
                         "machine). Member-tokens of a fit() row are tokens trained on; "
                         "`best val_loss` is the lowest validation loss it reached.")
    what = {"variants": "factorized vs full vs small", "ranks": "ranks",
            "strategies": ("GA vs OpenES" if compared == ("ga", "es")
                           else " vs ".join(compared)), "mutation-rates": "mutation rates",
            "init": "initialisations", "size-matched": "size-matched small vs factorized",
            None: args.variant}[args.compare]
    title = f"keras-lrne {args.command}: {what}"
    text = comparison.markdown_report(records, aggregates, title=title, metrics=metrics,
                                      extra_columns=extra,
                                      tests=tested_pairs(args.compare, labels), notes=notes)
    checkpoint.atomic_write(os.path.join(args.output, "comparison.md"), text)
    with checkpoint.atomic_path(os.path.join(args.output, "comparison.png")) as tmp:
        plot_comparison(curves, tmp, title=title,
                        ylabel="loss (nats per token)" if lm else "elite episode return",
                        xlabel_right="member-tokens" if lm else "environment steps",
                        baselines=baselines)
    return text

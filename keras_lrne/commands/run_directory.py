"""The life of a run's output directory: prepare, lock, resume, overwrite, finish.

A run writes into its `--output` directory. While it evolves, `backup/` holds its
checkpoint (Keras' `BackupAndRestore` plus keras-lrne's own state); when it ends, every
output is written atomically, `summary.json` (the finished marker) last, and only then is
the backup removed. A kill at any moment therefore leaves either a backup that
`--resume` continues, or a finished run that `--resume` leaves as it is.

A new run (`--overwrite`, or a directory holding no finished run) first removes
`summary.json`, then every other output an earlier run left (`RUN_OUTPUTS`), so a
`summary.json` always belongs to the outputs beside it: `keras-lrne evaluate`, `play` and
`generate` refuse a run directory without one (`check_finished`).
"""

import csv
import json
import os
import shutil
import time

#: The file whose presence marks a run as finished (written last).
SUMMARY_FILE = "summary.json"
#: The lock file that keeps two runs out of one output directory (removed when the run
#: ends; left behind only by a run that was killed).
LOCK_FILE = ".keras-lrne.lock"
#: The backup directory of a run, in its output directory.
BACKUP_DIR = "backup"
#: Everything a run writes into its output directory, `summary.json` first: a new run
#: removes them all (in this order) before it starts.
RUN_OUTPUTS = (
    SUMMARY_FILE, "history.csv", "model.keras", "saved_model", "policy", "lineage.npz",
    "tokenizer.json", "evaluation.json", "loss.png", "return.png", "fitness.png",
    "accuracy.png",
)
#: What `lm --lora` reads back on `--resume` before its first backup exists: kept by a
#: `--resume` that starts from the beginning, removed by any other new run.
RESUMABLE_INPUTS = ("pretrained.weights.h5", "pretrained.json")
#: Arguments that say how a command was invoked, not what the run is.
INVOCATION_ARGS = ("resume", "overwrite")
#: Arguments that do not change what a run computes, so a finished run may be reused
#: under other values (how it is invoked, where and on what it runs, what surrounds it).
NOT_RUN_SETTINGS = INVOCATION_ARGS + (
    "verbose", "output", "devices", "workers", "ray_address", "population_batch_size",
    "compare", "seeds", "ranks", "strategies", "rates", "factor_rates", "with_fit",
    "fit_learning_rate", "eval_episodes",
)


def make_output_dir(output):
    """Creates `output`, refusing a path that is a file (or under one)."""
    parent = output
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ValueError(
            f"Received an invalid value for `--output`: {parent!r} is a file, not a "
            f"directory. Received: --output={output!r}"
        )
    os.makedirs(output, exist_ok=True)


def lock(output):
    """The lock that keeps other runs (processes or threads) out of `output` while a run
    uses it; its file is removed when the run releases it."""
    from keras_lrne import checkpoint

    return checkpoint.BackupLock(output, name=LOCK_FILE, what="output directory",
                                 remove=True)


def _state(output):
    """`(finished, interrupted)`: whether `output` holds a summary, and a backup."""
    from keras_lrne import checkpoint

    finished = os.path.isfile(os.path.join(output, SUMMARY_FILE))
    interrupted = os.path.lexists(os.path.join(output, BACKUP_DIR, checkpoint.STATE_FILE))
    return finished, interrupted


def clear_outputs(output, keep=()):
    """Removes every output of an earlier run from `output`, `summary.json` first (from
    then on the directory holds no finished run), its backup last; returns the names
    removed. The names in `keep` stay."""
    removed = []
    for name in (*RUN_OUTPUTS, *RESUMABLE_INPUTS, BACKUP_DIR):
        path = os.path.join(output, name)
        if name in keep or not os.path.lexists(path):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(name)
    return removed


def check_finished(directory):
    """Refuses a run's output directory whose outputs may not belong to one finished run.

    A directory that holds `summary.json` is a finished run (a new run removes it before
    anything else); one that holds a backup or a run's lock file but no summary is a run
    that was interrupted, is still running, or was being replaced: its outputs may be
    missing or an earlier run's. Any other directory (e.g. a policy exported with
    `keras_lrne.export_policy`) is not a run's output directory and passes.

    Raises:
        ValueError: naming the directory, what it lacks and what to do.
    """
    directory = os.fspath(directory)
    if os.path.isfile(os.path.join(directory, SUMMARY_FILE)):
        return
    if os.path.lexists(os.path.join(directory, BACKUP_DIR)):
        why = f"its {BACKUP_DIR}/ is there but no {SUMMARY_FILE}: the run was interrupted"
    elif os.path.lexists(os.path.join(directory, LOCK_FILE)):
        why = (f"it has no {SUMMARY_FILE} but a run's lock file ({LOCK_FILE}): a run is "
               "writing it, or one was stopped before it finished")
    else:
        return
    raise ValueError(
        f"{directory!r} holds a keras-lrne run that has not finished ({why}), so its "
        "outputs may be missing or left from an earlier run. Finish it first: run the "
        "same command with --resume (or wait for the running one to end)."
    )


def prepare_output(args, output):
    """Checks `output` before any work; returns "finished", "resume" or "new".

    A finished run (its summary written) is never overwritten silently: `--resume`
    leaves it as it is, `--overwrite` replaces it. An interrupted run's backup is
    continued with `--resume` and never overwritten without `--overwrite`.
    """
    backup = os.path.join(output, BACKUP_DIR)
    finished, interrupted = _state(output)
    if args.overwrite:
        if args.resume:
            raise ValueError("`--resume` and `--overwrite` exclude each other. Received both.")
        # Every output of the old run goes, its summary first: a kill before the new run
        # ends must leave nothing that passes for the new run's (or a finished run).
        clear_outputs(output)
        return "new"
    if args.resume:
        if finished:
            # The summary is written last: a backup beside it was about to be removed.
            shutil.rmtree(backup, ignore_errors=True)
            return "finished"
        if interrupted:
            return "resume"
        print(f"[keras-lrne] --resume: no backup in {backup!r} yet; starting from the "
              "beginning.", flush=True)
        _clear_unfinished(output, keep=RESUMABLE_INPUTS)
        return "new"
    if interrupted:
        raise ValueError(
            f"An interrupted run's backup exists in {backup!r}. Pass --resume to continue "
            "it, or --overwrite (or another --output) to start again."
        )
    if finished:
        raise ValueError(
            f"{output!r} holds a finished run ({SUMMARY_FILE}). Pass --overwrite to replace "
            "it, or choose another --output."
        )
    _clear_unfinished(output)
    return "new"


def _clear_unfinished(output, keep=()):
    """Removes what an unfinished earlier run left in `output` (outputs without their
    summary: e.g. an `--overwrite` killed while it removed them), and says so."""
    removed = clear_outputs(output, keep)
    if removed:
        print(f"[keras-lrne] {output!r} held outputs of a run that did not finish "
              f"({', '.join(removed)}); removed them before starting.", flush=True)


def check_ready(args, output, also=()):
    """What `prepare_output` would refuse, refused before a comparison's first run."""
    if args.overwrite:
        return
    finished, interrupted = _state(output)
    if args.resume:
        if finished:
            check_settings(output, args, also)
        return
    if finished or interrupted:
        what = "a finished run" if finished else "an interrupted run's backup"
        raise ValueError(f"{output!r} holds {what}. Pass --resume to continue the "
                         "comparison, or --overwrite (or another --output) to start again.")


def run_settings(args):
    """The arguments of `args` stored with a run (all but how it was invoked)."""
    return {k: v for k, v in vars(args).items() if k not in INVOCATION_ARGS}


def write_summary(output, summary, args, generations=None, **details):
    """Writes the finished marker `summary.json`: the summary, the run's settings and
    `details`, atomically.

    `generations`, when given, is how many generations the run holds: it is recorded as
    the `generations` setting (what was run), and the `--generations` asked for, when it
    differs (e.g. `--resume --generations 1` of a run that had completed 2), as
    `requested_generations`.
    """
    from keras_lrne import checkpoint

    settings = run_settings(args)
    if generations is not None and settings.get("generations") != generations:
        details["requested_generations"] = settings.get("generations")
        settings["generations"] = generations
    checkpoint.atomic_write(
        os.path.join(output, SUMMARY_FILE),
        json.dumps({"summary": summary, "args": settings, **details}, indent=2,
                   default=str),
    )


def check_settings(output, args, also=()):
    """Refuses a finished run in `output` made with other settings than `args` (the
    run settings, plus `also` among those `NOT_RUN_SETTINGS` leaves out)."""
    with open(os.path.join(output, SUMMARY_FILE)) as f:
        stored = json.load(f)
    if "args" not in stored:
        return stored
    ignored = set(NOT_RUN_SETTINGS) - set(also)
    now = json.loads(json.dumps({k: v for k, v in vars(args).items() if k not in ignored},
                                default=str))
    before = {k: v for k, v in stored["args"].items() if k not in ignored}
    if "requested_generations" in stored and now.get("generations") == stored[
            "requested_generations"]:
        now["generations"] = before.get("generations")  # the same command line again
    # Keys only one side has come from another keras-lrne version's arguments.
    changed = sorted(k for k in set(now) & set(before) if now[k] != before[k])
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now"
                            for k in changed)
        raise ValueError(
            f"--resume: the finished run in {output!r} was made with other settings "
            f"({details}). Pass --overwrite to replace it, or choose another --output."
        )
    return stored


def read_history(path):
    """A History CSV as `{key: [float, ...]}` (empty cells and NA skipped)."""
    history = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key != "epoch" and value not in ("", "NA", None):
                    history.setdefault(key, []).append(float(value))
    return history


def load_finished(output, label, args=None, also=()):
    """The summary and History of a finished run in `output` (for `--resume`).

    With `args`, the run must have been made with the same settings: a finished run is
    never silently reused for another experiment.
    """
    if args is not None:
        stored = check_settings(output, args, also)
    else:
        with open(os.path.join(output, SUMMARY_FILE)) as f:
            stored = json.load(f)
    history = read_history(os.path.join(output, "history.csv"))
    print(f"[keras-lrne] {label}: the run in {output!r} has already finished; nothing to "
          "do (pass --overwrite to run it again).", flush=True)
    return stored["summary"], history


def evolve_and_save(args, model, task, strategy, output, *, mode, plot, summary_of,
                    extra_outputs=()):
    """Evolves `model` on `task` with a backup in `output/backup`, then writes every
    output atomically, the summary last, and only then drops the backup.

    A kill at any moment leaves either the backup (so `--resume` continues and writes the
    same outputs) or the finished run (its summary present).

    Args:
        args: The command's arguments (generations, seed, verbose, distribution, ...).
        model: The model to evolve (it holds the elite afterwards).
        task: What the model is evolved on.
        strategy: The strategy.
        output: The run's directory.
        mode: "new" or "resume", from `prepare_output`.
        plot: `(file name, title, plot_histories keyword arguments)` of the run's plot.
        summary_of: `summary_of(history dict, generations, wall seconds)` returns
            `(summary, details)` for `summary.json`.
        extra_outputs: `(name, write(path))` pairs of further outputs.

    Returns:
        `(summary, history)`.
    """
    import keras

    from keras_lrne import checkpoint, engine
    from keras_lrne.commands.builders import make_distribution
    from keras_lrne.plotting import plot_histories

    backup = os.path.join(output, BACKUP_DIR)
    start = time.perf_counter()
    history = engine.evolve(
        model, task, strategy=strategy, generations=args.generations, seed=args.seed,
        verbose=args.verbose,
        population_batch_size=getattr(args, "population_batch_size", None),
        distribution=make_distribution(args),
        callbacks=[keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False),
                   keras.callbacks.CSVLogger(os.path.join(output, "history.csv"),
                                             append=mode == "resume")],
    )
    wall = time.perf_counter() - start
    path, title, plot_kwargs = plot
    with checkpoint.atomic_path(os.path.join(output, path)) as tmp:
        plot_histories({args.variant: history.history}, tmp, title=title, **plot_kwargs)
    with checkpoint.atomic_path(os.path.join(output, "model.keras")) as tmp:
        model.save(tmp)
    if not getattr(args, "no_export", False):
        with checkpoint.atomic_path(os.path.join(output, "saved_model")) as tmp:
            model.export(tmp, format="tf_saved_model", verbose=False)
    for name, write in extra_outputs:
        with checkpoint.atomic_path(os.path.join(output, name)) as tmp:
            write(tmp)
    checkpoint.atomic_write(os.path.join(output, "lineage.npz"), model.lineage.to_bytes())
    generations = len(history.epoch)  # what the run holds, whatever --generations says
    summary, details = summary_of(history.history, generations, round(wall, 2))
    write_summary(output, summary, args, generations=generations, **details)
    shutil.rmtree(backup, ignore_errors=True)  # the run is complete: its summary exists
    return summary, history

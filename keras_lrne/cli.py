"""The `keras-lrne` command line.

`keras-lrne lm` runs the paper's language-modelling experiment (offline on the embedded
corpus by default); `keras-lrne lm --compare` runs its three variants side by side;
`keras-lrne atari|carracing|control` evolve policies; `keras-lrne play` runs an exported
policy and `keras-lrne generate` samples from an evolved language model.
"""

import argparse
import contextlib
import csv
import io
import json
import math
import os
import shutil
import sys
import time

import numpy as np

VARIANTS = ("factorized", "full", "small")

# The paper's LM settings (docs/design.md), selected with `--paper`.
PAPER_SETTINGS = {
    "population": 512,
    "parents": 16,
    "generations": 300,
    "sequence_length": 128,
    "num_sequences": 1024,
    "tokenizer": "word",
}


def _number_type(cast, description, valid):
    """An argparse type: `cast(text)`, rejected with a clear message unless `valid`."""

    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"expected {description}, received {text!r}")
        return value

    return parse


_positive_int = _number_type(int, "a positive integer", lambda v: v >= 1)
_non_negative_int = _number_type(int, "a non-negative integer", lambda v: v >= 0)
_positive_float = _number_type(float, "a positive number",
                               lambda v: v > 0 and np.isfinite(v))
_seed = _number_type(int, "an integer in [0, 2**31 - 1]", lambda v: 0 <= v <= 2**31 - 1)


def _devices(text):
    """`--devices`: a positive device count, or `all`."""
    if text == "all":
        return text
    return _number_type(int, "a positive integer or 'all'", lambda v: v >= 1)(text)


def _int_list(text, name, minimum):
    """A comma-separated list of distinct integers >= `minimum` (for `--seeds`, `--ranks`)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if not values or any(v < minimum or v > 2**31 - 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of integers >= {minimum}, received {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct {name}, received {text!r}")
    return tuple(values)


def _seeds(text):
    """`--seeds`: a count N (seeds 0..N-1) or a comma-separated list of seeds."""
    if "," not in text:
        count = _positive_int(text)
        if count > 1000:
            raise argparse.ArgumentTypeError(f"expected at most 1000 seeds, received {text!r}")
        return tuple(range(count))
    return _int_list(text, "seeds", 0)


def _ranks(text):
    """`--ranks`: a comma-separated list of distinct positive ranks."""
    return tuple(sorted(_int_list(text, "ranks", 1)))


DEVICES_HELP = (
    "split the population over this many local devices (GPUs, else CPU devices), or "
    "'all' of them (keras_lrne.distribution.PopulationParallel); results do not depend "
    "on it, and --resume may change it. Default: 1"
)


RESUME_HELP = (
    "continue an interrupted run from OUTPUT/backup (every run backs itself up there "
    "after each generation and keeps the backup until all its outputs are written); on a "
    "finished run it changes nothing"
)
OVERWRITE_HELP = "replace a finished run (or an interrupted run's backup) in --output"

SUMMARY_FILE = "summary.json"
LOCK_FILE = ".keras-lrne.lock"
#: Arguments that say how a command was invoked, not what the run is.
INVOCATION_ARGS = ("resume", "overwrite")


def _prepare_output(args, output):
    """Checks `output` before any work; returns "finished", "resume" or "new".

    A finished run (its summary written) is never overwritten silently: `--resume`
    leaves it as it is, `--overwrite` replaces it. An interrupted run's backup is
    continued with `--resume` and never overwritten without `--overwrite`.
    """
    from keras_lrne import checkpoint

    backup = os.path.join(output, "backup")
    interrupted = os.path.lexists(os.path.join(backup, checkpoint.STATE_FILE))
    finished = os.path.isfile(os.path.join(output, SUMMARY_FILE))
    if args.overwrite:
        if args.resume:
            raise ValueError("`--resume` and `--overwrite` exclude each other. Received both.")
        shutil.rmtree(backup, ignore_errors=True)
        # The old run is no longer finished: a kill before the new one ends must not
        # make --resume take the old summary for the new run's.
        for name in (SUMMARY_FILE, "history.csv"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output, name))
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
    return "new"


def _make_output_dir(output):
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


def _evolve_and_save(args, model, task, strategy, output, *, mode, plot, summary_of,
                     extra_outputs=()):
    """Evolves `model` on `task` with a backup in `output/backup`, then writes every
    output atomically, the summary last, and only then drops the backup.

    A kill at any moment leaves either the backup (so `--resume` continues and writes the
    same outputs) or the finished run (its summary present).

    Returns:
        `(summary, history)`.
    """
    import keras

    from keras_lrne import checkpoint
    from keras_lrne.plotting import plot_histories

    backup = os.path.join(output, "backup")
    start = time.perf_counter()
    history = model.evolve(
        task, strategy=strategy, generations=args.generations, seed=args.seed,
        verbose=args.verbose,
        population_batch_size=getattr(args, "population_batch_size", None),
        distribution=_make_distribution(args),
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
    with checkpoint.atomic_path(os.path.join(output, "saved_model")) as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
    for name, write in extra_outputs:
        with checkpoint.atomic_path(os.path.join(output, name)) as tmp:
            write(tmp)
    checkpoint.atomic_write(os.path.join(output, "lineage.npz"), model.lineage.to_bytes())
    summary, details = summary_of(history.history, len(history.epoch), round(wall, 2))
    run_args = {k: v for k, v in vars(args).items() if k not in INVOCATION_ARGS}
    checkpoint.atomic_write(
        os.path.join(output, SUMMARY_FILE),
        json.dumps({"summary": summary, "args": run_args, **details}, indent=2, default=str),
    )
    shutil.rmtree(backup, ignore_errors=True)  # the run is complete: its summary exists
    return summary, history


def _read_history(path):
    """A History CSV as `{key: [float, ...]}` (empty cells and NA skipped)."""
    history = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key != "epoch" and value not in ("", "NA", None):
                    history.setdefault(key, []).append(float(value))
    return history


#: Arguments that do not change what a run computes, so a finished run may be reused
#: under other values (how it is invoked, where and on what it runs, what surrounds it).
NOT_RUN_SETTINGS = INVOCATION_ARGS + (
    "verbose", "output", "devices", "workers", "ray_address", "population_batch_size",
    "compare", "seeds", "ranks", "with_fit", "fit_learning_rate",
)


def _check_settings(output, args, also=()):
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


def _load_finished(output, label, args=None, also=()):
    """The summary and History of a finished run in `output` (for `--resume`).

    With `args`, the run must have been made with the same settings: a finished run is
    never silently reused for another experiment.
    """
    if args is not None:
        stored = _check_settings(output, args, also)
    else:
        with open(os.path.join(output, SUMMARY_FILE)) as f:
            stored = json.load(f)
    history = _read_history(os.path.join(output, "history.csv"))
    print(f"[keras-lrne] {label}: the run in {output!r} has already finished; nothing to "
          "do (pass --overwrite to run it again).", flush=True)
    return stored["summary"], history


RL_COMMANDS = {
    "atari": {
        "help": "evolve the paper's Atari policy (Nature-DQN on 84x84 RGB, 4-frame stack)",
        "rank": 4, "population": 16, "parents": 4, "generations": 10, "episodes": 1,
        "max_episode_steps": 2500, "paper_population": 512, "paper_parents": 16,
    },
    "carracing": {
        "help": "evolve the paper's CarRacing-v3 policy (64x64 RGB, early termination)",
        "rank": 1, "population": 8, "parents": 2, "generations": 5, "episodes": 2,
        "max_episode_steps": 1000, "paper_population": 256, "paper_parents": 8,
    },
    "control": {
        "help": "evolve an MLP policy on a vector-observation gymnasium env (MuJoCo, "
        "classic control; Box or Discrete actions)",
        "rank": 4, "population": 32, "parents": 4, "generations": 20, "episodes": 1,
        "max_episode_steps": None, "paper_population": "-", "paper_parents": "-",
    },
}


class _HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default (unless its help already gives it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("Default:" in text or "(default:" in text
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text}. Default: %(default)s"


def _version():
    from importlib import metadata

    try:
        return metadata.version("keras-lrne")
    except metadata.PackageNotFoundError:  # run from a source tree
        from keras_lrne import __version__

        return __version__


def _paper(value):
    return "" if value in (None, "-") else f" (paper: {value})"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-lrne",
        description="Low-rank neuroevolution for Keras: evolve models with a compiled, "
        "population-batched genetic algorithm.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"keras-lrne {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = commands.add_parser

    def add_parser(name, **kwargs):
        return add(name, formatter_class=_HelpFormatter, **kwargs)

    commands.add_parser = add_parser
    lm = commands.add_parser(
        "lm",
        help="evolve the paper's transformer language model",
        description="Evolve the paper's 3-block transformer LM (Garbus & Pollack, 2025). "
        "With no arguments it runs offline on the embedded corpus (Python's pydoc topics) "
        "at a CPU-sized scale; --paper selects the paper's population and data sizes.",
    )
    lm.add_argument("--variant", choices=VARIANTS, default="factorized",
                    help="factorized (low-rank), full (same shape, unfactorized) or small "
                    "(narrow unfactorized baseline). Default: factorized")
    lm.add_argument("--rank", type=_positive_int, default=4,
                    help="rank of the attention and feed-forward factors (paper: 4 or 1)")
    lm.add_argument("--embed-rank", type=_positive_int, default=32,
                    help="rank of the token-embedding factors (paper: 32 or 4)")
    lm.add_argument("--init", choices=("paper", "scaled"), default="paper",
                    help="paper: the paper's initialisation (token embedding N(0, 1)); "
                    "scaled (not the paper's): embedding std 1/sqrt(width), so the tied "
                    "head starts at unit-scale logits and the loss falls faster")
    lm.add_argument("--population", type=_positive_int, default=32,
                    help="population size (paper: 512). Default: 32")
    lm.add_argument("--parents", type=_positive_int, default=4,
                    help="truncation size, survivors per generation (paper: 16). Default: 4")
    lm.add_argument("--generations", type=_positive_int, default=500,
                    help="generations (paper: 300). Default: 500")
    lm.add_argument("--mutation-rate", type=_positive_float, default=0.01,
                    help="relative mutation std of full tensors (factors use its square "
                    "root). Default: 0.01")
    _add_strategy_arguments(lm)
    lm.add_argument("--dataset", default=None,
                    help="a TensorFlow Datasets name with a text feature (tiny_shakespeare, "
                    "lm1b, ...). Default: the embedded offline corpus")
    lm.add_argument("--text-file", default=None,
                    help="a local UTF-8 text file, read as plain text (line breaks kept; "
                    "see --one-document-per-line)")
    lm.add_argument("--one-document-per-line", action="store_true",
                    help="with --text-file: every non-blank line is one document, line "
                    "breaks dropped (e.g. TinyStories, one story per line)")
    lm.add_argument("--max-documents", type=_positive_int, default=None,
                    help="use only the first N documents (the paper used 1024 stories)")
    lm.add_argument("--tokenizer", choices=("word", "character"), default="character",
                    help="character tokens, or word tokens (lower-cased words and "
                    "punctuation; closest to the paper's 2048-token BPE, --paper uses them)")
    lm.add_argument("--vocab-size", type=_positive_int, default=2048,
                    help="vocabulary size of the tokenizer (paper: 2048). Default: 2048")
    lm.add_argument("--sequence-length", type=_positive_int, default=64,
                    help="tokens per sequence (paper: 128). Default: 64")
    lm.add_argument("--num-sequences", type=_positive_int, default=32,
                    help="sequences every member is evaluated on (paper: 1024). Default: 32")
    lm.add_argument("--fresh-batch", action="store_true",
                    help="draw new sequences every generation instead of a fixed sample")
    lm.add_argument("--paper", action="store_true",
                    help="use the paper's sizes: population 512, parents 16, 300 "
                    "generations, 1024 sequences of 128 word tokens (needs a GPU)")
    lm.add_argument("--population-batch-size", type=_positive_int, default=None,
                    help="members per vectorised call (automatic by default)")
    _add_compare_arguments(lm)
    lm.add_argument("--with-fit", action="store_true",
                    help="with --compare: also train each compared model by gradients "
                    "(keras fit() with Adam) for the wall time its evolved run took, on "
                    "the same sequences, as a row `<variant>_fit`")
    lm.add_argument("--fit-learning-rate", type=_positive_float, default=0.001,
                    help="Adam's learning rate for --with-fit (Keras' default). Default: "
                    "0.001")
    lm.add_argument("--seed", type=_seed, default=0, help="run seed. Default: 0")
    lm.add_argument("--output", default=os.path.join("lrne_output", "lm"),
                    help="output directory. Default: lrne_output/lm")
    lm.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                    help="0 silent, 1 progress bar, 2 one line per generation")
    lm.add_argument("--resume", action="store_true", help=RESUME_HELP)
    lm.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    for name, spec in RL_COMMANDS.items():
        sub = commands.add_parser(name, help=spec["help"], description=spec["help"])
        if name == "atari":
            sub.add_argument("--game", default="Frostbite",
                             help="Atari game, e.g. Frostbite, Pong (paper: Asteroids, "
                             "Frostbite, Gravitar, Kangaroo). Default: Frostbite")
        if name == "control":
            sub.add_argument("--env", default="HalfCheetah-v5",
                             help="a gymnasium id with vector observations and Box "
                             "(continuous) or Discrete actions: MuJoCo v5 (HalfCheetah-v5, "
                             "Hopper-v5, ...), classic control (CartPole-v1, Pendulum-v1, "
                             "Acrobot-v1, MountainCar-v0, ...), LunarLander-v3")
        sub.add_argument("--variant", choices=VARIANTS, default="factorized",
                         help="factorized (low-rank), full (same shape, unfactorized) or "
                         "small (narrow unfactorized baseline)")
        sub.add_argument("--rank", type=_positive_int, default=spec["rank"],
                         help="factor rank" + _paper(spec["rank"] if name != "control"
                                                     else None))
        sub.add_argument("--population", type=_positive_int, default=spec["population"],
                         help="population size" + _paper(spec["paper_population"]))
        sub.add_argument("--parents", type=_positive_int, default=spec["parents"],
                         help="truncation size, survivors per generation"
                         + _paper(spec["paper_parents"]))
        sub.add_argument("--generations", type=_positive_int, default=spec["generations"],
                         help="generations" + _paper({"atari": 300, "carracing": 40}.get(name)))
        sub.add_argument("--episodes", type=_positive_int, default=spec["episodes"],
                         help="episodes per member per generation")
        steps = spec["max_episode_steps"]
        sub.add_argument("--max-episode-steps", type=_positive_int, default=steps,
                         help="step cap per episode" + (
                             "" if steps else " (default: the environment's registered "
                             "limit)"))
        sub.add_argument("--mutation-rate", type=_positive_float, default=0.01,
                         help="relative mutation std of full tensors (factors use its "
                         "square root)")
        _add_strategy_arguments(sub)
        if name == "carracing":
            sub.add_argument("--reevaluate-top", type=_positive_int, default=None,
                             help="two-stage selection: re-evaluate the best N (paper: 32)")
            sub.add_argument("--reevaluate-episodes", type=_positive_int, default=None,
                             help="episodes of the second stage (paper: 4)")
        _add_compare_arguments(sub)
        sub.add_argument("--seed", type=_seed, default=0, help="run seed. Default: 0")
        sub.add_argument("--output", default=os.path.join("lrne_output", name),
                         help="output directory")
        sub.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                         help="0 silent, 1 progress bar, 2 one line per generation")
        sub.add_argument("--resume", action="store_true", help=RESUME_HELP)
        sub.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    play = commands.add_parser(
        "play", help="run an exported policy and print its episode returns",
        description="Load a policy exported by keras_lrne.export_policy (or a run's output "
        "directory, which holds one in policy/), play episodes and print the returns.",
    )
    play.add_argument("dir", metavar="DIR", help="policy directory or a run's --output")
    play.add_argument("--env", default=None,
                      help="environment id (default: the one the policy was evolved on; "
                      "Atari policies take a game name or an ALE id)")
    play.add_argument("--episodes", type=_positive_int, default=1, help="episodes to play")
    play.add_argument("--max-episode-steps", type=_positive_int, default=None,
                      help="step cap (default: the run's)")
    play.add_argument("--seed", type=_seed, default=0,
                      help="reset seed of the first episode (episode i uses seed + i)")
    play.add_argument("--record", default=None, metavar="OUT.gif",
                      help="write a GIF of the first episode")

    gen = commands.add_parser(
        "generate", help="sample text from an evolved language model",
        description="Continue a prompt with the language model of a `keras-lrne lm` run "
        "(its output directory holds model.keras and tokenizer.json).",
    )
    gen.add_argument("dir", metavar="DIR", help="the --output directory of a keras-lrne lm run")
    gen.add_argument("--prompt", required=True, help="text to continue")
    gen.add_argument("--max-tokens", type=_positive_int, default=50,
                     help="tokens to generate")
    gen.add_argument("--temperature", type=_number_type(float, "a finite number >= 0",
                                                        lambda v: 0 <= v < float("inf")),
                     default=1.0,
                     help="sampling temperature; 0 is greedy. Default: 1.0")
    gen.add_argument("--top-k", type=_positive_int, default=None,
                     help="sample from the k most likely tokens only (default: all)")
    gen.add_argument("--seed", type=_seed, default=0,
                     help="sampling seed. Default: 0")
    return parser


STRATEGY_HELP = ("ga: the paper's genetic algorithm (--population, --parents, "
                 "--mutation-rate); es: OpenAI's evolution strategy on every tensor "
                 "(--population, even, --sigma, --learning-rate)")


def _add_strategy_arguments(parser):
    parser.add_argument("--devices", type=_devices, default=1, metavar="N|all",
                        help=DEVICES_HELP)
    parser.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                        help="evaluate in N Ray worker processes (keras_lrne.distribution."
                        "RayWorkers; needs the distributed extra); results do not depend "
                        "on it. Default: none (this process)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="evaluate in the Ray cluster at ADDR ('auto', HOST:PORT or "
                        "ray://HOST:PORT), with --workers workers (default: one per CPU "
                        "of the cluster). Default: none")
    parser.add_argument("--strategy", choices=("ga", "es"), default="ga", help=STRATEGY_HELP)
    parser.add_argument("--sigma", type=_positive_float, default=0.02,
                        help="es: noise std relative to each tensor's init std")
    parser.add_argument("--learning-rate", type=_positive_float, default=0.01,
                        help="es: Adam's learning rate on the mean (relative units)")


COMPARE_HELP = (
    "run a comparison: `variants` (the default: factorized, full and small), `ranks` "
    "(the factorized model at each of --ranks, plus full) or `strategies` (the GA and "
    "OpenES on --variant); every run gets the same data, episode seeds and budget per "
    "seed, and OUTPUT gets comparison.csv, comparison.md and comparison.png. --resume "
    "continues an interrupted comparison where it stopped"
)


def _add_compare_arguments(parser):
    parser.add_argument("--compare", nargs="?", const="variants", default=None,
                        choices=("variants", "ranks", "strategies"), metavar="KIND",
                        help=COMPARE_HELP)
    parser.add_argument("--seeds", type=_seeds, default=None, metavar="N|S1,S2,...",
                        help="run every variant on N seeds (0..N-1) or on the listed ones, "
                        "and report means, 95%% confidence intervals and significance "
                        "tests (without --compare: --variant alone on each seed). "
                        "Default: --seed only")
    parser.add_argument("--ranks", type=_ranks, default="1,2,4,8,16", metavar="R1,R2,...",
                        help="ranks of `--compare ranks`. Default: 1,2,4,8,16")


def _make_distribution(args):
    """The `RayWorkers` (`--workers`, `--ray-address`) or `PopulationParallel`
    (`--devices`) the arguments ask for; None for this process on one device."""
    if args.workers is not None or args.ray_address is not None:
        if args.devices != 1:
            raise ValueError("--devices cannot be combined with --workers or --ray-address: "
                             f"choose one. Received: --devices {args.devices}")
        from keras_lrne.distribution import RayWorkers

        return RayWorkers(num_workers=args.workers, address=args.ray_address)
    if args.devices == 1:
        return None
    from keras_lrne.distribution import PopulationParallel

    try:
        return PopulationParallel(devices=None if args.devices == "all" else args.devices)
    except ValueError as error:
        raise ValueError(f"{error} (from --devices {args.devices})") from None


def _make_strategy(args):
    """The strategy the command's arguments ask for."""
    from keras_lrne import strategies

    if args.strategy == "es":
        return strategies.OpenES(population_size=args.population, sigma=args.sigma,
                                 learning_rate=args.learning_rate)
    return strategies.GA(population_size=args.population, num_parents=args.parents,
                         mutation_rate=args.mutation_rate)


def _apply_paper_settings(args, argv):
    if not args.paper:
        return
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    for key, value in PAPER_SETTINGS.items():
        if f"--{key.replace('_', '-')}" not in given:
            setattr(args, key, value)


def _make_task(args):
    from keras_lrne.tasks import LanguageModeling

    return LanguageModeling(
        args.dataset,
        text_file=args.text_file,
        one_document_per_line=args.one_document_per_line,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        sequence_length=args.sequence_length,
        num_sequences=args.num_sequences,
        fresh_batch=args.fresh_batch,
        max_documents=args.max_documents,
        seed=args.seed,
    )


def _make_lm_model(args, task, variant):
    """The LM preset `variant` for `task`, initialised from `args.seed`."""
    import keras

    import keras_lrne

    keras.utils.set_random_seed(args.seed)
    return keras_lrne.presets.language_model(
        variant,
        vocab_size=task.vocab_size,
        sequence_length=args.sequence_length,
        rank=args.rank,
        embed_rank=args.embed_rank,
        init=args.init,
    )


def _run_variant(args, task, variant, output):
    import keras

    from keras_lrne import checkpoint

    _make_output_dir(output)
    with checkpoint.BackupLock(output, name=LOCK_FILE, what="output directory"):
        mode = _prepare_output(args, output)
        if mode == "finished":
            return _load_finished(output, variant, args)
        model = _make_lm_model(args, task, variant)
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        strategy = _make_strategy(args)
        params = int(model.count_params())
        baselines = task.baselines()
        print(f"[keras-lrne] {variant}: {params:,} parameters, {strategy}", flush=True)

        def summary_of(logs, generations, wall):
            summary = {
                "variant": variant,
                "parameters": params,
                "generations": generations,
                "first_loss": logs["loss"][0],
                "final_loss": logs["loss"][-1],
                "final_val_loss": logs["val_loss"][-1] if "val_loss" in logs else None,
                "wall_seconds": wall,
                "evolution_seconds": float(sum(logs.get("generation_seconds", []))),
                "member_tokens_per_second": float(np.median(logs["member_tokens_per_second"])),
                "member_tokens_per_generation": (strategy.num_members * task.num_sequences
                                                 * args.sequence_length),
                **baselines,
            }
            return summary, {"task": task.get_config(), "strategy": strategy.get_config()}

        extra = []
        if task.vectorizer is not None:
            from keras_lrne.generation import TOKENIZER_FILE, save_tokenizer

            extra.append((TOKENIZER_FILE, lambda path: save_tokenizer(task, path)))
        plot = ("loss.png", f"keras-lrne lm ({variant})",
                {"baselines": _baseline_lines(baselines)})
        summary, history = _evolve_and_save(args, model, task, strategy, output, mode=mode,
                                            plot=plot, summary_of=summary_of,
                                            extra_outputs=extra)
    print(
        f"[keras-lrne] {variant}: loss {summary['first_loss']:.3f} -> "
        f"{summary['final_loss']:.3f} in {summary['generations']} generations "
        f"({summary['wall_seconds']:.1f} s); wrote {output}",
        flush=True,
    )
    print(f"[keras-lrne] {variant}: {_judge(summary)}", flush=True)
    return summary, history.history


def _baseline_lines(baselines):
    return {"uniform (ln V)": baselines["uniform_loss"],
            "unigram": baselines["unigram_loss"]}


def _judge(summary):
    """Where a run's final losses stand against the uniform and unigram baselines."""
    parts = []
    for key in ("final_loss", "final_val_loss"):
        value = summary.get(key)
        if value is None:
            continue
        rel = []
        for name, base in (("uniform", summary["uniform_loss"]),
                           ("unigram", summary["unigram_loss"])):
            word = "below" if value < base else "above"
            rel.append(f"{abs(value - base):.2f} {word} {name}")
        parts.append(f"{key} {value:.3f} ({', '.join(rel)})")
    return (f"{'; '.join(parts)}; baselines: uniform ln V = {summary['uniform_loss']:.3f}, "
            f"unigram = {summary['unigram_loss']:.3f} nats per token")


def _lm_runner():
    """The comparison runner of `lm`: one task per seed, shared by the variants."""
    tasks = {}

    def run(run_args):
        if run_args.seed not in tasks:
            tasks[run_args.seed] = _make_task(run_args)
            print(f"[keras-lrne] data (seed {run_args.seed}): {tasks[run_args.seed]!r}",
                  flush=True)
        return _run_variant(run_args, tasks[run_args.seed], run_args.variant,
                            run_args.output)

    run.tasks = tasks
    return run


def run_lm(args, argv):
    _apply_paper_settings(args, argv)
    if args.with_fit and args.compare is None and args.seeds is None:
        raise ValueError("--with-fit adds rows to a comparison: pass --compare (or --seeds) "
                         "too. Received: --with-fit without --compare")
    plan = _comparison_plan(args)
    if plan is None:
        task = _make_task(args)
        print(f"[keras-lrne] data: {task!r}", flush=True)
        _run_variant(args, task, args.variant, args.output)
        return 0
    return _run_comparison(args, argv, plan, _lm_runner())


# ----------------------------------------------------------------------- comparisons


def _comparison_plan(args):
    """`[(label, overrides)]` of the comparison the arguments ask for; None for one run."""
    if args.compare is None:
        return None if args.seeds is None else [(args.variant, {})]
    if args.compare == "variants":
        return [(variant, {"variant": variant}) for variant in VARIANTS]
    if args.compare == "ranks":
        return ([(f"rank_{rank}", {"variant": "factorized", "rank": rank})
                 for rank in args.ranks] + [("full", {"variant": "full"})])
    return [("ga", {"strategy": "ga"}), ("es", {"strategy": "es"})]


def _comparison_tests(args, labels):
    """The pairs of labels a comparison's report tests against each other."""
    if args.compare == "variants":
        pairs = [("factorized", "full"), ("factorized", "small")]
    elif args.compare == "ranks":
        pairs = [(label, "full") for label in labels if label.startswith("rank_")]
    elif args.compare == "strategies":
        pairs = [("ga", "es")]
    else:
        pairs = []
    pairs += [(label, f"{label}_fit") for label in labels if f"{label}_fit" in labels
              and label in ("factorized", "full")]
    return [(a, b) for a, b in pairs if a in labels and b in labels]


def _run_output(args, label, seed):
    """A comparison run's directory: OUTPUT/label, or OUTPUT/label/seed_S with --seeds."""
    if args.seeds is None:
        return os.path.join(args.output, label)
    return os.path.join(args.output, label, f"seed_{seed}")


def _comparison_runs(args, argv, plan):
    """`[(label, seed, run_args)]`, every run's arguments checked before any work."""
    seeds = args.seeds
    if seeds is None:
        seeds = (args.seed,)
    elif any(a == "--seed" or a.startswith("--seed=") for a in argv):
        raise ValueError("--seed and --seeds exclude each other: --seeds lists every seed "
                         f"of the comparison. Received: --seeds {','.join(map(str, seeds))}")
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    overridden = {"variants": ("--variant",), "ranks": ("--variant", "--rank"),
                  "strategies": ("--strategy",)}.get(args.compare, ())
    for option in overridden:
        if option in given:
            raise ValueError(f"`--compare {args.compare}` sets {option} itself for every "
                             f"run. Received: {option} with --compare {args.compare}")
    if "--ranks" in given and args.compare != "ranks":
        raise ValueError("--ranks lists the ranks of `--compare ranks`. Received: --ranks "
                         f"with --compare {args.compare or '(none)'}")
    if args.compare == "strategies" and getattr(args, "reevaluate_top", None):
        raise ValueError("Two-stage selection (--reevaluate-top) needs a truncation-selection "
                         "strategy such as the GA; `--compare strategies` also runs OpenES. "
                         f"Received: --reevaluate-top {args.reevaluate_top}")
    runs = []
    for seed in seeds:
        for label, overrides in plan:
            run_args = argparse.Namespace(**{**vars(args), **overrides, "seed": seed})
            run_args.output = _run_output(args, label, seed)
            try:
                _make_strategy(run_args)  # e.g. OpenES needs an even population
                _check_ready(run_args, run_args.output)
                if getattr(args, "with_fit", False):
                    fit = argparse.Namespace(**vars(run_args))
                    fit.output = _run_output(args, _fit_label(args, label, run_args), seed)
                    _check_ready(fit, fit.output, also=FIT_SETTINGS)
            except ValueError as error:
                raise ValueError(f"{error} (in the comparison's run {label!r}, seed "
                                 f"{seed})") from None
            runs.append((label, seed, run_args))
    return runs


def _fit_label(args, label, run_args):
    """The label of a `--with-fit` row: `<label>_fit`; one `<variant>_fit` row per seed
    under `--compare strategies` (GA and OpenES evolve the same model)."""
    return f"{run_args.variant}_fit" if args.compare == "strategies" else f"{label}_fit"


def _check_ready(args, output, also=()):
    """What `_prepare_output` would refuse, refused before a comparison's first run."""
    from keras_lrne import checkpoint

    if args.overwrite:
        return
    finished = os.path.isfile(os.path.join(output, SUMMARY_FILE))
    interrupted = os.path.lexists(os.path.join(output, "backup", checkpoint.STATE_FILE))
    if args.resume:
        if finished:
            _check_settings(output, args, also)
        return
    if finished or interrupted:
        what = "a finished run" if finished else "an interrupted run's backup"
        raise ValueError(f"{output!r} holds {what}. Pass --resume to continue the "
                         "comparison, or --overwrite (or another --output) to start again.")


#: How many times a `--with-fit` run is scored over its budget.
FIT_POINTS = 50
#: Keras' default batch size, what a user would start from.
FIT_BATCH_SIZE = 32
#: Settings a finished `--with-fit` run must share to be reused.
FIT_SETTINGS = ("fit_learning_rate",)


def _deadline_callback():
    """A Keras callback that stops `fit()` once `time.perf_counter()` passes `.deadline`
    and counts the batches trained (`.batches`)."""
    import keras

    class Deadline(keras.callbacks.Callback):
        deadline = float("inf")
        batches = 0  # batches trained, over every fit() call

        def _check(self):
            if time.perf_counter() >= self.deadline:
                self.model.stop_training = True

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            self._check()

        def on_epoch_end(self, epoch, logs=None):
            self._check()

    return Deadline()


def _run_fit(args, task, output, budget):
    """Trains the LM `args.variant` by gradients (Adam) for `budget` seconds of `fit()`.

    The same model, initialisation and sequences as the evolved run; after every epoch
    its loss is measured (outside the budget) about `FIT_POINTS` times, on the sequences
    the evolved elite is scored on and on the validation sequences (with `--fresh-batch`,
    every stretch between two measurements trains on a new sample). Writes
    `history.csv`, `model.keras` and `summary.json` into `output`. An interrupted fit
    run starts again from the beginning.

    Returns:
        `(summary, history dict)`.
    """
    import keras

    from keras_lrne import checkpoint

    label = f"{args.variant}_fit"
    if not budget > 0:
        raise ValueError(
            f"--with-fit: the evolved run beside {output!r} logged no generation time "
            f"(generation_seconds), so it gives no budget for fit(). It was made by an "
            f"older keras-lrne: pass --overwrite to run it again. Received: budget={budget}")
    _make_output_dir(output)
    with checkpoint.BackupLock(output, name=LOCK_FILE, what="output directory"):
        if _prepare_output(args, output) == "finished":
            return _load_finished(output, label, args, also=FIT_SETTINGS)
        model = _make_lm_model(args, task, args.variant)
        model.compile(optimizer=keras.optimizers.Adam(args.fit_learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        validation = task.validation_data()
        print(f"[keras-lrne] {label}: fit() with Adam(learning_rate="
              f"{args.fit_learning_rate}) for {budget:.1f} s", flush=True)
        history, seconds, epoch, chunk = {}, 0.0, 0, 0
        stop = _deadline_callback()
        while seconds < budget:
            # Fit in stretches of about 2% of the budget, scoring the model after each.
            x, y = task.train_data(chunk)
            start = time.perf_counter()
            stop.deadline = start + min(budget - seconds, budget / FIT_POINTS)
            fit_history = model.fit(x, y, batch_size=FIT_BATCH_SIZE, epochs=10**9,
                                    verbose=0, callbacks=[stop])
            seconds += time.perf_counter() - start
            epoch += len(fit_history.epoch)
            chunk += 1
            logs = {"loss": float(model.evaluate(x, y, verbose=0)),
                    "elapsed_seconds": seconds, "epochs": epoch,
                    "member_tokens": stop.batches * FIT_BATCH_SIZE * x.shape[1]}
            if validation is not None:
                logs["val_loss"] = float(model.evaluate(*validation, verbose=0))
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
        keys = sorted(history)
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["epoch", *keys])
        for i in range(chunk):
            writer.writerow([i, *(history[k][i] for k in keys)])
        checkpoint.atomic_write(os.path.join(output, "history.csv"), table.getvalue())
        with checkpoint.atomic_path(os.path.join(output, "model.keras")) as tmp:
            model.save(tmp)
        summary = {
            "variant": label, "parameters": int(model.count_params()), "epochs": epoch,
            "final_loss": history["loss"][-1],
            "final_val_loss": history["val_loss"][-1] if "val_loss" in history else None,
            "fit_seconds": seconds, "budget_seconds": budget, **task.baselines(),
        }
        run_args = {k: v for k, v in vars(args).items() if k not in INVOCATION_ARGS}
        checkpoint.atomic_write(os.path.join(output, SUMMARY_FILE), json.dumps(
            {"summary": summary, "args": run_args}, indent=2, default=str))
    print(f"[keras-lrne] {label}: loss {history['loss'][0]:.3f} -> {summary['final_loss']:.3f}"
          f" in {epoch} epochs ({seconds:.1f} s of fit()); wrote {output}", flush=True)
    return summary, history


def _run_record(command, label, seed, output, summary):
    """A comparison row and curves, computed from the run's `history.csv`."""
    history = _read_history(os.path.join(output, "history.csv"))
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
    if "elapsed_seconds" in history:  # trained by fit()
        steps = len(history["loss"])
        row.update(final_loss=history["loss"][-1],
                   final_val_loss=history.get("val_loss", [None])[-1],
                   wall_seconds=history["elapsed_seconds"][-1],
                   member_tokens=int(history["member_tokens"][-1]), generations=None)
        return row, (history["loss"], history["elapsed_seconds"], False)
    generations = len(history["loss"])
    times = np.cumsum(history["generation_seconds"])
    row["generations"] = generations
    row["wall_seconds"] = float(times[-1]) if generations else 0.0
    if command == "lm":
        row.update(final_loss=history["loss"][-1],
                   final_val_loss=history.get("val_loss", [None])[-1],
                   member_tokens=generations * summary["member_tokens_per_generation"])
        return row, (history["loss"], times, True)
    steps = np.cumsum(history["env_steps"])
    row.update(final_episode_return=history["episode_return"][-1],
               env_steps=int(steps[-1]))
    if "first_stage_seconds" in history:
        row["first_stage_seconds"] = float(sum(history["first_stage_seconds"]))
    return row, (history["episode_return"], steps, True)


def _machine():
    import platform

    import keras

    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()}-core {cpu} CPU, Python {platform.python_version()}, Keras "
            f"{keras.__version__} on {keras.config.backend()}")


def _paired_ratio_notes(records, column, what):
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


def _run_comparison(args, argv, plan, runner):
    """Runs every label of `plan` on every seed (seed by seed), then writes the report.

    Finished runs are reused with `--resume` (after checking their settings), an
    interrupted one continues from its backup, so an interrupted comparison continues
    where it stopped. Every number of the report is read back from the runs' files.
    """
    from keras_lrne import checkpoint, comparison

    runs = _comparison_runs(args, argv, plan)
    _make_output_dir(args.output)
    records, curves = [], {}
    summaries = []
    for label, seed, run_args in runs:
        summary, _ = runner(run_args)
        summaries.append(summary)
        row, curve = _run_record(args.command, label, seed, run_args.output, summary)
        records.append(row)
        curves.setdefault(label, []).append(curve)
        if getattr(args, "with_fit", False) and (args.compare != "strategies"
                                                 or label == plan[0][0]):
            fit_label = _fit_label(args, label, run_args)
            fit_output = _run_output(args, fit_label, seed)
            fit_summary, _ = _run_fit(run_args, runner.tasks[seed], fit_output,
                                      row["wall_seconds"])
            fit_row, fit_curve = _run_record(args.command, fit_label, seed, fit_output,
                                             fit_summary)
            records.append(fit_row)
            curves.setdefault(fit_label, []).append(fit_curve)
    records.sort(key=lambda r: list(curves).index(r["label"]))
    lm = args.command == "lm"
    metric = "final_loss" if lm else "final_episode_return"
    columns = [metric] + (["final_val_loss"] if lm else [])
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
    metrics = [("final_loss", "final loss")] if lm else [(metric, "final elite return")]
    if lm and any(r["final_val_loss"] is not None for r in records):
        metrics.append(("final_val_loss", "final val_loss"))
    extra = [("wall_seconds", "wall s"),
             ("member_tokens", "member-tokens") if lm else ("env_steps", "env steps")]
    if "first_stage_seconds" in columns:
        extra.append(("first_stage_seconds", "stage-1 s"))
    extra.append(("parameters", "parameters"))
    times = [os.path.getmtime(os.path.join(run_args.output, "history.csv"))
             for _, _, run_args in runs]
    span = " to ".join(dict.fromkeys(
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) for t in (min(times), max(times))))
    notes = [f"Command: `keras-lrne {' '.join(argv)}`; runs finished {span}; {_machine()}.",
             f"Budget per run: population {args.population}, {args.parents} parents, "
             f"{args.generations} generations, strategy "
             f"{'ga and es' if args.compare == 'strategies' else args.strategy}."]
    notes += _paired_ratio_notes(records, "first_stage_seconds", "stage-1 time")
    baselines = None
    if lm:
        baselines = {"uniform (ln V)": float(np.mean([s["uniform_loss"] for s in summaries])),
                     "unigram": float(np.mean([s["unigram_loss"] for s in summaries]))}
        notes.append(f"Baselines (nats per token, mean over seeds): uniform ln V = "
                     f"{baselines['uniform (ln V)']:.3f}, unigram = "
                     f"{baselines['unigram']:.3f}.")
        if getattr(args, "with_fit", False):
            notes.append(f"`*_fit` rows: the same model trained by `fit()` with Adam "
                         f"(learning rate {args.fit_learning_rate}) for the wall time of its "
                         "evolved run on the same seed; member-tokens are tokens trained on.")
    what = {"variants": "factorized vs full vs small", "ranks": "ranks",
            "strategies": "GA vs OpenES", None: args.variant}[args.compare]
    title = f"keras-lrne {args.command}: {what}"
    text = comparison.markdown_report(records, aggregates, title=title, metrics=metrics,
                                      extra_columns=extra,
                                      tests=_comparison_tests(args, labels), notes=notes)
    checkpoint.atomic_write(os.path.join(args.output, "comparison.md"), text)
    from keras_lrne.plotting import plot_comparison

    with checkpoint.atomic_path(os.path.join(args.output, "comparison.png")) as tmp:
        plot_comparison(curves, tmp, title=title,
                        ylabel="loss (nats per token)" if lm else "elite episode return",
                        xlabel_right="wall time (s)" if lm else "environment steps",
                        baselines=baselines)
    print(text, flush=True)
    return 0


def _make_rl(args):
    import keras_lrne

    tasks, presets = keras_lrne.tasks, keras_lrne.presets
    if args.command == "atari":
        task = tasks.Atari(args.game, episodes=args.episodes,
                           max_episode_steps=args.max_episode_steps)
        model = presets.atari_policy(args.variant, num_actions=task.num_outputs,
                                     rank=args.rank)
    elif args.command == "carracing":
        task = tasks.CarRacing(episodes=args.episodes, max_episode_steps=args.max_episode_steps,
                               reevaluate_top=args.reevaluate_top,
                               reevaluate_episodes=args.reevaluate_episodes)
        model = presets.carracing_policy(args.variant, num_actions=task.num_outputs,
                                         rank=args.rank)
    else:
        # Box actions: Control (squashed into the bounds); Discrete: Environment (argmax).
        task_class = tasks.Control if _has_box_actions(args.env) else tasks.Environment
        task = task_class(args.env, episodes=args.episodes,
                          max_episode_steps=args.max_episode_steps,
                          normalize_observations=True)
        if len(task.input_shape) != 1:
            raise ValueError(
                f"Received an invalid value for `--env`: `control` takes environments with "
                f"vector observations, but {args.env!r} observes shape {task.input_shape}; "
                f"use `atari` or `carracing` (or the Python API with "
                f"`keras_lrne.tasks.Environment`) for images. Received: --env={args.env!r}"
            )
        model = presets.control_policy(args.variant, input_dim=task.input_shape[0],
                                       num_actions=task.num_outputs, rank=args.rank)
    return task, model


def _has_box_actions(env_id):
    """Whether the gymnasium environment `env_id` has a continuous (Box) action space."""
    from keras_lrne.tasks.environment import _require_gymnasium, check_env_id

    gymnasium = _require_gymnasium()
    check_env_id(env_id, "--env")
    env = gymnasium.make(env_id)
    try:
        return isinstance(env.action_space, gymnasium.spaces.Box)
    finally:
        env.close()


def _run_rl_once(args):
    """One `atari|carracing|control` run into `args.output`: `(summary, history dict)`."""
    import keras

    import keras_lrne
    from keras_lrne import checkpoint

    output = args.output
    label = f"{args.command} {args.variant}"
    _make_output_dir(output)
    with checkpoint.BackupLock(output, name=LOCK_FILE, what="output directory"):
        mode = _prepare_output(args, output)
        if mode == "finished":
            return _load_finished(output, label, args)
        keras.utils.set_random_seed(args.seed)
        task, model = _make_rl(args)
        strategy = _make_strategy(args)
        params = int(model.count_params())
        print(f"[keras-lrne] {label}: {params:,} parameters, {task!r}, {strategy}",
              flush=True)

        def summary_of(logs, generations, wall):
            summary = {
                "command": args.command, "variant": args.variant, "parameters": params,
                "generations": generations,
                "final_episode_return": logs["episode_return"][-1],
                "best_episode_return": max(logs["episode_return"]), "wall_seconds": wall,
                "evolution_seconds": float(sum(logs.get("generation_seconds", []))),
                "env_steps": int(sum(logs["env_steps"])),
                "early_termination_saved": float(np.mean(logs["early_termination_saved"])),
            }
            return summary, {"strategy": strategy.get_config(),
                             "task_state": task.get_state()}

        plot = ("return.png", f"keras-lrne {args.command} ({args.variant})",
                {"keys": ("episode_return", "mean_return"), "ylabel": "episode return"})
        policy = ("policy", lambda path: keras_lrne.export_policy(model, task, path))
        summary, history = _evolve_and_save(args, model, task, strategy, output, mode=mode,
                                            plot=plot, summary_of=summary_of,
                                            extra_outputs=[policy])
    logs = history.history
    print(f"[keras-lrne] {label}: elite return "
          f"{logs['episode_return'][0]:.1f} -> {logs['episode_return'][-1]:.1f} in "
          f"{summary['generations']} generations ({summary['wall_seconds']:.1f} s); wrote "
          f"{output}", flush=True)
    return summary, logs


def run_rl(args, argv=()):
    plan = _comparison_plan(args)
    if plan is None:
        _run_rl_once(args)
        return 0
    return _run_comparison(args, argv, plan, lambda run_args: _run_rl_once(run_args))


def run_play(args):
    from keras_lrne.playback import RecordError, play

    try:
        returns = play(args.dir, args.env, episodes=args.episodes, seed=args.seed,
                       max_episode_steps=args.max_episode_steps, record=args.record)
    except RecordError as error:
        raise ValueError(str(error)) from None
    for i, value in enumerate(returns):
        print(f"episode {i + 1}: return {value:.2f}", flush=True)
    print(f"mean return over {len(returns)} episode(s): {float(np.mean(returns)):.2f}")
    if args.record:
        print(f"[keras-lrne] wrote {args.record}")
    return 0


def run_generate(args):
    from keras_lrne.generation import generate_text, load_run

    model, kind, vocabulary = load_run(args.dir)
    text = generate_text(model, args.prompt, vocabulary, tokenizer=kind,
                         max_tokens=args.max_tokens, temperature=args.temperature,
                         top_k=args.top_k, seed=args.seed)
    sep = "" if kind == "character" else " "
    print(args.prompt + sep + text)
    return 0


def main(argv=None):
    """Entry point of the `keras-lrne` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    import keras_lrne

    keras_lrne._import_public_api()  # Keras and the backend load only now
    from keras_lrne.checkpoint import BackupInUseError

    try:
        if args.command == "lm":
            return run_lm(args, argv)
        if args.command == "play":
            return run_play(args)
        if args.command == "generate":
            return run_generate(args)
        return run_rl(args, argv)
    except (ValueError, FileNotFoundError, ImportError, BackupInUseError) as error:
        parser.exit(2, f"keras-lrne {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

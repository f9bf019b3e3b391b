"""Argument types and the option groups that several commands share.

Every type raises `argparse.ArgumentTypeError` with the expected form and the text it
received, so argparse reports e.g. ``argument --population: expected a positive
integer, received '0'``. Nothing here imports Keras: `keras-lrne --help` answers at once.
"""

import argparse
import os

import numpy as np

#: The model variants of the paper's comparisons: low-rank, the same network
#: unfactorized, and a narrow unfactorized network of about the factorized size.
VARIANTS = ("factorized", "full", "small")


def number_type(cast, description, valid):
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


positive_int = number_type(int, "a positive integer", lambda v: v >= 1)
non_negative_int = number_type(int, "a non-negative integer", lambda v: v >= 0)
positive_float = number_type(float, "a positive number", lambda v: v > 0 and np.isfinite(v))
seed = number_type(int, "an integer in [0, 2**31 - 1]", lambda v: 0 <= v <= 2**31 - 1)


#: The native strategies' `--strategy` names (`evosax:NAME` names an evosax algorithm).
STRATEGIES = ("ga", "es", "cma-es", "sep-cma-es", "snes", "pgpe")


def strategy(text):
    """`--strategy`: a native strategy's name, or `evosax:NAME` (any evosax algorithm,
    e.g. `evosax:CMA_ES`; whether it exists and the backend is JAX is checked once
    Keras is loaded, by `builders.make_strategy`)."""
    prefix, colon, name = text.partition(":")
    if text in STRATEGIES or (prefix == "evosax" and colon and name.isidentifier()):
        return text
    raise argparse.ArgumentTypeError(
        f"expected one of {', '.join(STRATEGIES)} or evosax:NAME (an evosax algorithm, "
        f"e.g. evosax:CMA_ES), received {text!r}")


def strategies(text):
    """`--strategies`: a comma-separated list of at least two distinct `--strategy` names."""
    names = str(text).split(",")
    for name in names:
        try:
            strategy(name)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated strategies, each one of {', '.join(STRATEGIES)} "
                f"or evosax:NAME, e.g. pgpe,es. Received: {text!r}") from None
    if len(names) < 2 or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected at least two distinct strategies, e.g. pgpe,es. Received: {text!r}")
    return tuple(names)


def devices(text):
    """`--devices`: a positive device count, or `all`."""
    if text == "all":
        return text
    return number_type(int, "a positive integer or 'all'", lambda v: v >= 1)(text)


def int_list(text, name, minimum):
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


def seeds(text):
    """`--seeds`: a count N (seeds 0..N-1) or a comma-separated list of seeds."""
    if "," not in text:
        count = positive_int(text)
        if count > 1000:
            raise argparse.ArgumentTypeError(f"expected at most 1000 seeds, received {text!r}")
        return tuple(range(count))
    return int_list(text, "seeds", 0)


def ranks(text):
    """`--ranks`: a comma-separated list of distinct positive ranks."""
    return tuple(sorted(int_list(text, "ranks", 1)))


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default (unless its help already gives it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("Default:" in text or "(default:" in text
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text}. Default: %(default)s"


def rates(text):
    """A comma-separated list of distinct positive rates (`--rates`, `--factor-rates`)."""
    values = []
    for part in str(text).split(","):
        try:
            value = float(part)
        except ValueError:
            value = float("nan")
        if not (value > 0 and np.isfinite(value)):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated positive numbers, e.g. 0.01,0.1. Received: {text!r}")
        values.append(value)
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct rates. Received: {text!r}")
    return tuple(values)


def paper(value):
    """` (paper: VALUE)` for a help text, or nothing where the paper gives no value."""
    return "" if value in (None, "-") else f" (paper: {value})"


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
STRATEGY_HELP = ("ga: the paper's genetic algorithm (--population, --parents, "
                 "--mutation-rate); es: OpenAI's evolution strategy on every tensor "
                 "(--population, even, --sigma, --learning-rate); cma-es: Hansen's CMA-ES, "
                 "full covariance, for models of up to 20,000 evolved numbers (--population, "
                 "--sigma the initial step size); sep-cma-es: its diagonal variant, linear in "
                 "the number of weights (--population, --sigma); snes: separable natural "
                 "evolution strategy (--population, --sigma); pgpe: PGPE with ClipUp "
                 "(--population, even, --sigma); evosax:NAME: evosax's algorithm NAME, "
                 "e.g. evosax:CMA_ES or evosax:Sep_CMA_ES, with its default parameters "
                 "(--population; JAX backend only, needs the evosax extra)")
COMPARE_HELP = (
    "run a comparison: `variants` (the default: factorized, full and small), `ranks` "
    "(the factorized model at each of --ranks, plus full), `strategies` (each of "
    "--strategies on --variant, by default the GA and OpenES), and for the LM the "
    "ablations `mutation-rates` (full at each of --rates, factorized at each of "
    "--factor-rates), `init` (full and factorized, each "
    "with the paper's and the scaled initialisation) or `size-matched` (small against "
    "factorized at rank 1 / embed rank 4, the paper's pairing of similar sizes); every "
    "run gets the same data, episode seeds and budget per "
    "seed, and OUTPUT gets comparison.csv, comparison.md and comparison.png. --resume "
    "continues an interrupted comparison where it stopped"
)
#: The kinds of `--compare`; the last three are LM ablations.
COMPARE_KINDS = ("variants", "ranks", "strategies", "mutation-rates", "init", "size-matched")
VERBOSE_HELP = "0 silent, 1 progress bar, 2 one line per generation"


def add_strategy_arguments(parser):
    """Where and how the population is evaluated, and by which strategy."""
    parser.add_argument("--devices", type=devices, default=1, metavar="N|all",
                        help=DEVICES_HELP)
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="evaluate in N Ray worker processes (keras_lrne.distribution."
                        "RayWorkers; needs the distributed extra); results do not depend "
                        "on it. Default: none (this process)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="evaluate in the Ray cluster at ADDR ('auto', HOST:PORT or "
                        "ray://HOST:PORT), with --workers workers (default: one per CPU "
                        "of the cluster). Default: none")
    parser.add_argument("--strategy", type=strategy, default="ga",
                        metavar="{" + ",".join(STRATEGIES) + ",evosax:NAME}",
                        help=STRATEGY_HELP)
    parser.add_argument("--sigma", type=positive_float, default=0.02,
                        help="es, snes, pgpe: noise std relative to each tensor's init std; "
                        "cma-es, sep-cma-es: the initial step size, in the same units")
    parser.add_argument("--learning-rate", type=positive_float, default=0.01,
                        help="es: Adam's learning rate on the mean (relative units)")


def add_compare_arguments(parser):
    """`--compare`, `--seeds` and `--ranks`: several runs side by side."""
    parser.add_argument("--compare", nargs="?", const="variants", default=None,
                        choices=COMPARE_KINDS, metavar="KIND",
                        help=COMPARE_HELP)
    parser.add_argument("--seeds", type=seeds, default=None, metavar="N|S1,S2,...",
                        help="run every variant on N seeds (0..N-1) or on the listed ones, "
                        "and report means, 95%% confidence intervals and significance "
                        "tests (without --compare: --variant alone on each seed). "
                        "Default: --seed only")
    parser.add_argument("--ranks", type=ranks, default="1,2,4,8,16", metavar="R1,R2,...",
                        help="ranks of `--compare ranks`. Default: 1,2,4,8,16")
    parser.add_argument("--strategies", type=strategies, default="ga,es",
                        metavar="S1,S2,...",
                        help="the strategies of `--compare strategies` (names of --strategy), "
                        "each on --variant with the same budget. Default: ga,es (the GA "
                        "and OpenES)")
    parser.add_argument("--rates", type=rates, default="0.01,0.03,0.1", metavar="R1,R2,...",
                        help="mutation rates of the full model in `--compare "
                        "mutation-rates`. Default: 0.01,0.03,0.1")
    parser.add_argument("--factor-rates", type=rates, default="0.01,0.1",
                        metavar="R1,R2,...", help="factor mutation rates of the factorized "
                        "model in `--compare mutation-rates`. Default: 0.01,0.1 (0.1 is the "
                        "paper's)")


def add_run_arguments(parser, command, *, seed_help="run seed. Default: 0",
                      output_help=None):
    """`--seed`, `--output`, `--verbose`, `--resume` and `--overwrite` of a training run."""
    parser.add_argument("--seed", type=seed, default=0, help=seed_help)
    parser.add_argument("--output", default=os.path.join("lrne_output", command),
                        help=output_help or "output directory")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help=VERBOSE_HELP)
    parser.add_argument("--resume", action="store_true", help=RESUME_HELP)
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--no-export", action="store_true",
                        help="skip the TensorFlow SavedModel export (OUTPUT/saved_model); "
                        "model.keras is written either way. Default: off (export)")

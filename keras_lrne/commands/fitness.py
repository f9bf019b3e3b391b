"""`keras-lrne fitness`: evolve your own model on your own fitness function.

    keras-lrne fitness my_objective:accuracy --model my_objective:build_model \\
        --data my_objective:load_data --generations 50

`FUNCTION` is a `keras_lrne.tasks.Fitness` function: `fn(outputs[, y])` on batches of
`--data` (compiled, `keras.ops` only), or with `--per-member` `fn(model)` in plain
Python. `--model` names a function that returns the Keras model (built, or built on the
data). `MODULE` is an importable module name or a path to a `.py` file (loaded under a
private module name, its folder importable).
"""

import argparse
import hashlib
import importlib
import importlib.util
import os
import sys

import numpy as np

from keras_lrne.commands import arguments, run_directory
from keras_lrne.commands.arguments import positive_float, positive_int
from keras_lrne.commands.builders import make_strategy

NAME = "fitness"
HELP = "evolve the model a function of yours builds on a fitness function of yours"


def reference(text):
    """`MODULE:NAME`, MODULE an importable module or a `.py` file."""
    module, sep, name = text.rpartition(":")
    if not sep or not module or not name.isidentifier():
        raise argparse.ArgumentTypeError(
            f"expected MODULE:NAME (a module or .py file, and a function in it), "
            f"received {text!r}")
    return text


def add_parser(commands, formatter_class):
    """Adds `fitness` to the `commands` subparsers."""
    summary = __doc__.split("\n\n")[0].rstrip(".")
    sub = commands.add_parser(NAME, help=HELP, description=f"{summary}. {HELP.capitalize()}.",
                              formatter_class=formatter_class)
    sub.add_argument("function", type=reference, metavar="MODULE:FUNCTION",
                     help="the fitness function: fn(outputs) or fn(outputs, y) on --data "
                     "(compiled, keras.ops only), or fn(model) with --per-member")
    sub.add_argument("--model", type=reference, required=True, metavar="MODULE:BUILDER",
                     help="a function returning the Keras model to evolve")
    sub.add_argument("--data", type=reference, default=None, metavar="MODULE:FUNCTION",
                     help="a function returning x or a tuple (x, y): the batches the "
                     "compiled fitness is evaluated on; a list or dict is the model's "
                     "inputs (not with --per-member). Default: none")
    sub.add_argument("--per-member", action="store_true",
                     help="call FUNCTION(model) in Python once per member (any code: "
                     "model.predict, a simulator, a subprocess)")
    sub.add_argument("--minimize", action="store_true",
                     help="lower fitness is better (default: higher is better)")
    sub.add_argument("--population", type=positive_int, default=32, help="population size")
    sub.add_argument("--parents", type=positive_int, default=4,
                     help="ga: truncation size, survivors per generation")
    sub.add_argument("--generations", type=positive_int, default=20, help="generations")
    sub.add_argument("--mutation-rate", type=positive_float, default=0.01,
                     help="ga: relative mutation std of full tensors (factors use its "
                     "square root)")
    arguments.add_strategy_arguments(sub)
    arguments.add_run_arguments(sub, NAME)
    return sub


#: The prefix of the private module names that files given by path are loaded under.
USER_MODULE_PREFIX = "_keras_lrne_user_"


def _load_file(path):
    """Imports the `.py` file at `path` under a private module name (so a file called
    `json.py` never replaces a module of that name), with its folder importable (after
    the installed packages, so that a file there never hides one of them)."""
    given, path = path, os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such file: {given!r}")
    module_name = USER_MODULE_PREFIX + hashlib.sha256(path.encode()).hexdigest()[:16]
    module = sys.modules.get(module_name)
    if module is not None and getattr(module, "__file__", None) == path:
        return module
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.append(folder)  # the file's own imports of its neighbours
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    # The modules of its folder it imported: Ray workers (which cannot import from
    # this machine's folder) receive them by value with the file.
    module.__keras_lrne_local_modules__ = sorted(
        name for name in set(sys.modules) - before if _from_folder(name, folder))
    return module


def _from_folder(name, folder):
    """Whether the module `name` is imported from `folder` itself (its top-level module
    is `folder/TOP.py` or the package `folder/TOP/`), not e.g. from a virtual
    environment inside it."""
    top = name.split(".")[0]
    path = getattr(sys.modules.get(top), "__file__", None)
    return bool(path) and os.path.dirname(os.path.abspath(path)) in (
        folder, os.path.join(folder, top))


def _load_module(name):
    """Imports `name`: a module name, or a path to a `.py` file (see `_load_file`)."""
    if name.endswith(".py") or os.sep in name:
        return _load_file(name)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would find it
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name.split(".")[0] and error.name != name:
            raise
        raise ValueError(
            f"Could not import the module {name!r} (give an importable module name or a "
            f"path to a .py file): {error}") from None


def resolve(text, option):
    """The function `MODULE:NAME` names; the error names `option` and the text."""
    module_name, _, name = text.rpartition(":")
    module = _load_module(module_name)
    value = getattr(module, name, None)
    if not callable(value):
        raise ValueError(
            f"Received an invalid value for `{option}`: {module_name!r} has no function "
            f"{name!r}. Received: {option}={text!r}")
    if module.__name__.startswith(USER_MODULE_PREFIX):
        try:  # Ray workers cannot import a file loaded by path: send it by value
            import ray
        except ImportError:
            return value
        for local in (module.__name__, *module.__keras_lrne_local_modules__):
            if local in sys.modules:
                ray.cloudpickle.register_pickle_by_value(sys.modules[local])
    return value


def make_task_and_model(args):
    """The `Fitness` task and the model the arguments name."""
    import keras

    from keras_lrne.tasks import Fitness

    fn = resolve(args.function, "MODULE:FUNCTION")
    builder = resolve(args.model, "--model")
    if args.per_member and args.data is not None:
        raise ValueError(
            "--data is not used with --per-member: FUNCTION(model) reads what it needs "
            f"itself. Received: --data={args.data!r}")
    if not args.per_member and args.data is None:
        raise ValueError(
            "A compiled fitness (without --per-member) needs --data MODULE:FUNCTION, "
            "returning x or (x, y). Received: no --data")
    data = None
    if args.data is not None:
        data = resolve(args.data, "--data")()
        if data is None or (not isinstance(data, (tuple, list, dict)) and np.ndim(data) == 0):
            raise ValueError(
                f"Received an invalid value for `--data`: {args.data!r} returned "
                f"{type(data).__name__} {data!r:.60}, not data. It must return x (an "
                "array, or a list or dict of arrays for several inputs) or a tuple (x, y). "
                f"Received: --data={args.data!r}")
    task = Fitness(fn, data=data, per_member=args.per_member, maximize=not args.minimize)
    model = builder()
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Received an invalid value for `--model`: {args.model!r} returned a "
            f"{type(model).__name__}, not a Keras model. Received: --model={args.model!r}")
    return task, model


def run(args, argv):
    """Runs `keras-lrne fitness`; returns the exit status."""
    import keras

    output = args.output
    label = f"fitness {args.function}"
    args.variant = "fitness"  # the run's curve label
    run_directory.make_output_dir(output)
    with run_directory.lock(output):
        mode = run_directory.prepare_output(args, output)
        if mode == "finished":
            run_directory.load_finished(output, label, args)
            return 0
        keras.utils.set_random_seed(args.seed)
        task, model = make_task_and_model(args)
        strategy = make_strategy(args)
        print(f"[keras-lrne] {label}: model {model.name!r}, {task!r}, {strategy}",
              flush=True)

        def summary_of(logs, generations, wall):
            best = max if not args.minimize else min
            summary = {
                "command": NAME, "function": args.function, "model": args.model,
                "parameters": int(model.count_params()), "generations": generations,
                "first_fitness": logs["fitness"][0], "final_fitness": logs["fitness"][-1],
                "best_fitness": best(logs["fitness"]), "wall_seconds": wall,
                "evolution_seconds": float(sum(logs.get("generation_seconds", []))),
            }
            return summary, {"strategy": strategy.get_config()}

        plot = ("fitness.png", f"keras-lrne fitness ({args.function})",
                {"keys": ("fitness", "mean_fitness"), "ylabel": "fitness"})
        summary, _ = run_directory.evolve_and_save(
            args, model, task, strategy, output, mode=mode, plot=plot,
            summary_of=summary_of)
    print(f"[keras-lrne] {label}: fitness {summary['first_fitness']:.4g} -> "
          f"{summary['final_fitness']:.4g} in {summary['generations']} generations "
          f"({summary['wall_seconds']:.1f} s); wrote {output}", flush=True)
    return 0

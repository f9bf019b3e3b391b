"""The `keras-lrne` command line.

`keras-lrne lm` runs the paper's language-modelling experiment (offline on the embedded
corpus by default); `keras-lrne lm --compare` runs its three variants side by side;
`keras-lrne atari|carracing|control` evolve policies; `keras-lrne fitness` evolves your
own model on your own fitness function; `keras-lrne play` runs an exported
policy, `keras-lrne evaluate` plays a run's elite on held-out episodes and
`keras-lrne generate` samples from an evolved language model.

Each command lives in its own module of `keras_lrne.commands`; this module registers
them, parses the command line and reports a bad value as a usage error (exit status 2).
It also keeps TensorFlow's start-up lines off the console (`_quiet_tensorflow_start_up`):
that filtering belongs to this program, never to `import keras_lrne`.
"""

import argparse
import json
import os
import re
import sys
import tempfile

from keras_lrne.commands import (
    atari,
    carracing,
    control,
    evaluate,
    fitness,
    generate,
    lm,
    play,
)
from keras_lrne.commands.arguments import HelpFormatter

#: The commands, in the order `keras-lrne --help` lists them.
COMMANDS = (lm, atari, carracing, control, fitness, play, evaluate, generate)

#: Commands that import TensorFlow on every backend (text tokenisation).
_USE_TENSORFLOW = ("lm", "generate")

#: Lines TensorFlow's C++ runtime prints at start-up on a healthy machine (absl logging
#: ignores TF_CPP_MIN_LOG_LEVEL before it is initialised).
_START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on"
    r"|Could not find cuda drivers|failed call to cuInit|cpu_feature_guard\.cc"
    r"|^To enable the following instructions:|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation_placer\.cc.*already registered|TF-TRT Warning: Could not find TensorRT"
)


def _keras_backend_name():
    """The backend Keras will load (`KERAS_BACKEND`, else keras.json), without Keras."""
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def _quiet_tensorflow_start_up(command):
    """Imports TensorFlow, where `command` will need it, without its start-up chatter.

    TensorFlow's runtime logs a dozen INFO lines and, on a machine without a GPU,
    `failed call to cuInit` as an error although nothing is wrong. Here (in the
    console script's own process, before any other thread runs) TensorFlow is imported
    and its devices listed with the process's stderr captured; the known start-up lines
    (`_START_UP_NOISE`) are dropped and every other line is written to stderr as it was,
    so real errors still show. `KERAS_LRNE_BACKEND_LOGS=1` keeps everything; nothing
    happens once TensorFlow is imported, or on another backend for a command that does
    not use TensorFlow.
    """
    if ("tensorflow" in sys.modules or os.environ.get("KERAS_LRNE_BACKEND_LOGS") == "1"
            or (_keras_backend_name() != "tensorflow" and command not in _USE_TENSORFLOW)):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr descriptor
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            try:
                import tensorflow

                tensorflow.config.list_physical_devices()  # device start-up logs now
            except ImportError:
                pass  # Keras (or the command) reports a missing TensorFlow itself
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", "replace")
    kept = [line for line in text.splitlines() if not _START_UP_NOISE.search(line)]
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")


def _version():
    from importlib import metadata

    try:
        return metadata.version("keras-lrne")
    except metadata.PackageNotFoundError:  # run from a source tree
        from keras_lrne import __version__

        return __version__


def build_parser():
    """The `keras-lrne` argument parser, with one subcommand per module of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="keras-lrne",
        description="Low-rank neuroevolution for Keras: evolve models with a compiled, "
        "population-batched genetic algorithm.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"keras-lrne {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands, HelpFormatter)
    return parser


def main(argv=None):
    """Entry point of the `keras-lrne` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    import keras_lrne

    _quiet_tensorflow_start_up(args.command)
    keras_lrne._import_public_api()  # Keras and the backend load only now
    from keras_lrne.checkpoint import BackupInUseError

    command = {module.NAME: module for module in COMMANDS}[args.command]
    try:
        from keras_lrne.commands.builders import check_strategy

        check_strategy(args)  # e.g. evosax:NAME on TensorFlow, before any output
        return command.run(args, argv)
    except (ValueError, FileNotFoundError, ImportError, BackupInUseError) as error:
        parser.exit(2, f"keras-lrne {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

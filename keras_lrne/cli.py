"""The `keras-lrne` command line.

`keras-lrne lm` runs the paper's language-modelling experiment (offline on the embedded
corpus by default); `keras-lrne lm --compare` runs its three variants side by side;
`keras-lrne atari|carracing|control` evolve policies; `keras-lrne fitness` evolves your
own model on your own fitness function; `keras-lrne play` runs an exported
policy, `keras-lrne evaluate` plays a run's elite on held-out episodes and
`keras-lrne generate` samples from an evolved language model.

Each command lives in its own module of `keras_lrne.commands`; this module registers
them, parses the command line and reports a bad value as a usage error (exit status 2).
"""

import argparse
import sys

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

    keras_lrne._import_public_api()  # Keras and the backend load only now
    from keras_lrne.checkpoint import BackupInUseError

    command = {module.NAME: module for module in COMMANDS}[args.command]
    try:
        return command.run(args, argv)
    except (ValueError, FileNotFoundError, ImportError, BackupInUseError) as error:
        parser.exit(2, f"keras-lrne {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""keras-lrne: low-rank neuroevolution for Keras.

Train Keras models with a compiled, population-batched genetic algorithm; factorized
layers store each weight matrix as two low-rank factors (Garbus & Pollack, 2025).
"""

import sys as _sys

__version__ = "0.1.0"

__all__ = [
    "EvolveMixin",
    "Lineage",
    "Model",
    "Sequential",
    "distribution",
    "evaluators",
    "evolve",
    "export_policy",
    "layers",
    "merge_lora",
    "presets",
    "strategies",
    "tasks",
]


def _started_by_the_command_line():
    """True inside the `keras-lrne` console script (or `python -m keras_lrne`): it
    imports Keras (and so the backend) only after parsing its arguments, so `--help`,
    `--version` and argument errors answer at once, and it filters the backend's
    start-up lines itself (`keras_lrne.cli`)."""
    import os

    if os.path.basename(_sys.argv[0] if _sys.argv else "") in ("keras-lrne", "keras-lrne.exe"):
        return True
    # `python -m keras_lrne[.cli]`: while the package is imported, argv[0] is "-m".
    argv = getattr(_sys, "orig_argv", [])
    return bool(_sys.argv) and _sys.argv[0] == "-m" and any(
        flag == "-m" and module in ("keras_lrne", "keras_lrne.cli")
        for flag, module in zip(argv, argv[1:]))


def _import_public_api():
    """Imports the public API (and so registers the layers with Keras' serialisation)."""
    import importlib

    # Not `from keras_lrne import ...`: that would look the names up here first.
    distribution, evaluators, layers, presets, strategies, tasks = (
        importlib.import_module(f"keras_lrne.{name}")
        for name in ("distribution", "evaluators", "layers", "presets", "strategies",
                     "tasks"))
    from keras_lrne.engine import evolve
    from keras_lrne.export import export_policy, merge_lora
    from keras_lrne.lineage import Lineage
    from keras_lrne.models import EvolveMixin, Model, Sequential

    globals().update(
        distribution=distribution, evaluators=evaluators, evolve=evolve, layers=layers,
        presets=presets, strategies=strategies, tasks=tasks, export_policy=export_policy,
        merge_lora=merge_lora,
        Lineage=Lineage, EvolveMixin=EvolveMixin, Model=Model, Sequential=Sequential,
    )


if not _started_by_the_command_line():
    # Written out (not `_import_public_api()`) so that static readers of the package,
    # such as the API reference's, see the public names.
    from keras_lrne import distribution, evaluators, layers, presets, strategies, tasks
    from keras_lrne.engine import evolve
    from keras_lrne.export import export_policy, merge_lora
    from keras_lrne.lineage import Lineage
    from keras_lrne.models import EvolveMixin, Model, Sequential


def __getattr__(name):
    if name in __all__:  # the command line imported the API lazily
        _import_public_api()
        return globals()[name]
    # `EvolutionHyperModel` needs the optional keras-tuner: import it only when asked for
    # (not in `__all__`, so `from keras_lrne import *` never needs keras-tuner).
    if name == "EvolutionHyperModel":
        from keras_lrne.tuner import EvolutionHyperModel

        return EvolutionHyperModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

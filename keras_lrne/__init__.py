"""keras-lrne: low-rank neuroevolution for Keras.

Train Keras models with a compiled, population-batched genetic algorithm; factorized
layers store each weight matrix as two low-rank factors (Garbus & Pollack, 2025).
"""

import json
import os as _os
import re
import sys as _sys
import tempfile

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
    name = _os.environ.get("KERAS_BACKEND")
    if name:
        return name
    home = _os.environ.get("KERAS_HOME") or _os.path.join(_os.path.expanduser("~"), ".keras")
    try:
        with open(_os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def _quiet_backend_start_up():
    """Imports TensorFlow (the default backend) without its start-up chatter.

    TensorFlow's runtime logs a dozen INFO lines and, on a machine without a GPU,
    `failed call to cuInit` as an error although nothing is wrong. Here TensorFlow is
    imported and its devices listed with the process's stderr captured; the known
    start-up lines (`_START_UP_NOISE`) are dropped and every other line is written to
    stderr as it was, so real errors still show. `KERAS_LRNE_BACKEND_LOGS=1` keeps
    everything; nothing happens on other backends or once TensorFlow is imported.
    """
    if ("tensorflow" in _sys.modules or _keras_backend_name() != "tensorflow"
            or _os.environ.get("KERAS_LRNE_BACKEND_LOGS") == "1"):
        return
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        _sys.stderr.flush()
        saved = _os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr descriptor
        return
    with tempfile.TemporaryFile() as captured:
        _os.dup2(captured.fileno(), 2)
        try:
            try:
                import tensorflow

                tensorflow.config.list_physical_devices()  # device start-up logs now
            except ImportError:
                pass  # Keras reports a missing backend itself
        finally:
            _sys.stderr.flush()
            _os.dup2(saved, 2)
            _os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", "replace")
    kept = [line for line in text.splitlines() if not _START_UP_NOISE.search(line)]
    if kept:
        _sys.stderr.write("\n".join(kept) + "\n")


def _started_by_the_command_line():
    """True inside the `keras-lrne` console script: it imports Keras (and so the
    backend) only after parsing its arguments, so `--help`, `--version` and argument
    errors answer at once."""
    return _os.path.basename(_sys.argv[0] if _sys.argv else "") in (
        "keras-lrne", "keras-lrne.exe")


def _import_public_api():
    """Imports the public API (and so registers the layers with Keras' serialisation)."""
    import importlib

    _quiet_backend_start_up()
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
    _quiet_backend_start_up()
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

"""keras-lrne: low-rank neuroevolution for Keras.

Train Keras models with a compiled, population-batched genetic algorithm; factorized
layers store each weight matrix as two low-rank factors (Garbus & Pollack, 2025).
"""

from keras_lrne import layers, presets, strategies, tasks
from keras_lrne.export import export_policy
from keras_lrne.lineage import Lineage
from keras_lrne.models import EvolveMixin, Model, Sequential

__version__ = "0.1.0"

__all__ = [
    "EvolveMixin",
    "Lineage",
    "Model",
    "Sequential",
    "export_policy",
    "layers",
    "presets",
    "strategies",
    "tasks",
]


def __getattr__(name):
    # `EvolutionHyperModel` needs the optional keras-tuner: import it only when asked for
    # (not in `__all__`, so `from keras_lrne import *` never needs keras-tuner).
    if name == "EvolutionHyperModel":
        from keras_lrne.tuner import EvolutionHyperModel

        return EvolutionHyperModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

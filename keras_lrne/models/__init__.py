"""Models with `evolve()`."""

from keras_lrne.models.evolve_mixin import EvolveMixin
from keras_lrne.models.model import Model
from keras_lrne.models.sequential import Sequential

__all__ = ["EvolveMixin", "Model", "Sequential"]

"""Tasks: what a population is evaluated on."""

from keras_lrne.tasks.base import ArrayTask, Task
from keras_lrne.tasks.environment import Environment
from keras_lrne.tasks.language_modeling import LanguageModeling

__all__ = ["ArrayTask", "Environment", "LanguageModeling", "Task"]

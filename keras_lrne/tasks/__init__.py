"""Tasks: what a population is evaluated on."""

from keras_lrne.tasks.base import ArrayTask, Task
from keras_lrne.tasks.language_modeling import LanguageModeling

__all__ = ["ArrayTask", "LanguageModeling", "Task"]

"""Tasks: what a population is evaluated on."""

from keras_lrne.tasks.atari import Atari
from keras_lrne.tasks.base import ArrayTask, Task
from keras_lrne.tasks.car_racing import CarRacing
from keras_lrne.tasks.control import Control
from keras_lrne.tasks.environment import Environment
from keras_lrne.tasks.fitness import Fitness
from keras_lrne.tasks.jax_environment import JaxEnvironment
from keras_lrne.tasks.language_modeling import LanguageModeling

__all__ = [
    "ArrayTask",
    "Atari",
    "CarRacing",
    "Control",
    "Environment",
    "Fitness",
    "JaxEnvironment",
    "LanguageModeling",
    "Task",
]

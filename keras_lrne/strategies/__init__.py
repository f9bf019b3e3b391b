"""Population strategies: the ask/tell contract (`Strategy`), `GA` and `OpenES`."""

from keras_lrne.strategies.base import Strategy
from keras_lrne.strategies.ga import GA, GAState
from keras_lrne.strategies.open_es import OpenES, OpenESState

#: The GA's state under its former name (before strategies owned their own states).
StrategyState = GAState

__all__ = ["GA", "GAState", "OpenES", "OpenESState", "Strategy", "StrategyState"]

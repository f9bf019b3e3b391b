"""Population strategies."""

from keras_lrne.strategies.base import Strategy, StrategyState
from keras_lrne.strategies.ga import GA

__all__ = ["GA", "Strategy", "StrategyState"]

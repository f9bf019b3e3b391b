"""Population strategies: the ask/tell contract (`Strategy`), `GA`, `OpenES`, `CMAES` and
`SepCMAES`."""

from keras_lrne.strategies.base import Strategy
from keras_lrne.strategies.cma_es import CMAES, CMAESState
from keras_lrne.strategies.ga import GA, GAState
from keras_lrne.strategies.open_es import OpenES, OpenESState
from keras_lrne.strategies.sep_cma_es import SepCMAES, SepCMAESState

#: The GA's state under its former name (before strategies owned their own states).
StrategyState = GAState

__all__ = ["CMAES", "GA", "CMAESState", "GAState", "OpenES", "OpenESState", "SepCMAES",
           "SepCMAESState", "Strategy", "StrategyState"]

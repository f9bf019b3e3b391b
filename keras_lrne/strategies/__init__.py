"""Population strategies: the ask/tell contract (`Strategy`), `GA`, `OpenES`, `CMAES`,
`SepCMAES`, `SNES`, `PGPE`, and `Evosax` (any evosax algorithm, on JAX)."""

from keras_lrne.strategies.base import Strategy
from keras_lrne.strategies.cma_es import CMAES, CMAESState
from keras_lrne.strategies.evosax_bridge import Evosax, EvosaxState
from keras_lrne.strategies.ga import GA, GAState
from keras_lrne.strategies.open_es import OpenES, OpenESState
from keras_lrne.strategies.pgpe import PGPE, PGPEState
from keras_lrne.strategies.sep_cma_es import SepCMAES, SepCMAESState
from keras_lrne.strategies.snes import SNES, SNESState

#: The GA's state under its former name (before strategies owned their own states).
StrategyState = GAState

__all__ = [
           "CMAES",
           "GA",
           "PGPE",
           "SNES",
           "CMAESState",
           "Evosax",
           "EvosaxState",
           "GAState",
           "OpenES",
           "OpenESState",
           "PGPEState",
           "SNESState",
           "SepCMAES",
           "SepCMAESState",
           "Strategy",
           "StrategyState",
]

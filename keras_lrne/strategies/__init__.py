"""Population strategies: the ask/tell contract (`Strategy`), `GA`, `OpenES`, `SNES` and
`PGPE`."""

from keras_lrne.strategies.base import Strategy
from keras_lrne.strategies.ga import GA, GAState
from keras_lrne.strategies.open_es import OpenES, OpenESState
from keras_lrne.strategies.pgpe import PGPE, PGPEState
from keras_lrne.strategies.snes import SNES, SNESState

#: The GA's state under its former name (before strategies owned their own states).
StrategyState = GAState

__all__ = ["GA", "PGPE", "SNES", "GAState", "OpenES", "OpenESState", "PGPEState",
           "SNESState", "Strategy", "StrategyState"]

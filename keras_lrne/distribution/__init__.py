"""Scaling evolution out: the population over one host's devices (`PopulationParallel`).

`model.evolve(..., distribution=PopulationParallel())` evaluates the population on every
local device; results do not depend on the number of devices.
"""

from keras_lrne.distribution.population_parallel import PopulationParallel, distribution

__all__ = ["PopulationParallel", "distribution"]

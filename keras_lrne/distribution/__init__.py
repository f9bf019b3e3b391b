"""Scaling evolution out: the population over one host's devices (`PopulationParallel`)
or over Ray workers on one machine or a cluster (`RayWorkers`).

`model.evolve(..., distribution=...)` takes either; results do not depend on the number
of devices or workers.
"""

from keras_lrne.distribution.population_parallel import PopulationParallel, distribution
from keras_lrne.distribution.ray_workers import RayWorkers

__all__ = ["PopulationParallel", "RayWorkers", "distribution"]

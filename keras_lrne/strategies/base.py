"""The `Strategy` base class: public init / ask / tell owning the bookkeeping."""

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from keras_lrne.strategies import operators


class StrategyState(NamedTuple):
    """State of a population strategy.

    Attributes:
        population: list of `(P, ...)` tensors, one per evolvable variable.
        generation: number of completed `tell` calls.
        seed: the run seed.
        losses: the last evaluated losses (sanitized, float64), or None.
        best_loss: best finite loss seen so far (inf before any).
        parents: for each member of `population`, the index of the member of the previous
            population it was made from (its own index in the initial population).
        seeds: for each member, the mutation seed applied to its parent, or -1 when it
            passed unchanged (elites and initial members).
    """

    population: list
    generation: int
    seed: int
    losses: object
    best_loss: float
    parents: np.ndarray
    seeds: np.ndarray


class Strategy:
    """Base class of population strategies (`init` / `ask` / `tell`).

    Subclasses hold their hyper-parameters in a frozen dataclass `config` and implement
    `_tell(state, losses, rng) -> (population, parents, seeds)`. The public methods own
    what every strategy needs: NaN/inf losses count as the worst and never become elite,
    best-so-far and the generation counter.

    Args:
        config: the strategy's frozen dataclass of hyper-parameters.
    """

    def __init__(self, config):
        self.config = config
        self._functions = None

    @property
    def population_size(self):
        return self.config.population_size

    def get_config(self):
        return dataclasses.asdict(self.config)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.__class__.__name__}({args})"

    def noise_stds(self, specs):
        """Per evolvable variable spec, the std of the mutation noise."""
        raise NotImplementedError

    def bind(self, functions):
        """Attaches the compiled population functions (`reproduce`) of a run."""
        self._functions = functions

    def init(self, population, seed):
        """Returns the state of a new run from its initial population tensors."""
        size = int(population[0].shape[0])
        if size != self.population_size:
            raise ValueError(
                "The initial population has the wrong size. Expected "
                f"population_size={self.population_size}. Received: {size} members"
            )
        index = np.arange(size, dtype=np.int32)
        return StrategyState(
            population=list(population),
            generation=0,
            seed=int(seed),
            losses=None,
            best_loss=math.inf,
            parents=index,
            seeds=np.full((size,), -1, np.int32),
        )

    def ask(self, state):
        """The population to evaluate next."""
        return state.population

    def tell(self, state, losses):
        """Returns the next state given one loss per member of `ask(state)`."""
        losses = operators.sanitize_losses(losses)
        if losses.shape != (self.population_size,):
            raise ValueError(
                f"Expected one loss per member, shape ({self.population_size},). "
                f"Received: losses.shape={losses.shape}"
            )
        if self._functions is None:
            raise RuntimeError("The strategy is not bound to a model; use `model.evolve()`.")
        rng = operators.generation_rng(state.seed, state.generation)
        population, parents, seeds = self._tell(state, losses, rng)
        finite = losses[np.isfinite(losses)]
        best = min(state.best_loss, float(finite.min())) if finite.size else state.best_loss
        return state._replace(
            population=population,
            generation=state.generation + 1,
            losses=losses,
            best_loss=best,
            parents=np.asarray(parents, np.int32),
            seeds=np.asarray(seeds, np.int32),
        )

    def _tell(self, state, losses, rng):
        raise NotImplementedError

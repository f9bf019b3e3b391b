"""The paper's genetic algorithm (truncation selection, elitism, Gaussian mutation)."""

import dataclasses
import math
import numbers

import numpy as np

from keras_lrne._validation import check_bool, check_int
from keras_lrne.strategies import operators
from keras_lrne.strategies.base import Strategy


@dataclasses.dataclass(frozen=True)
class GAConfig:
    population_size: int
    num_parents: int
    mutation_rate: float = 0.01
    factor_mutation_rate: float = None
    freeze_normalization: bool = True
    reevaluate_top: int = None
    reevaluate_episodes: int = None


def _check_rate(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a positive finite number. "
            f"Received: {name}={value!r}"
        )


class GA(Strategy):
    """The genetic algorithm of Such et al. (2017) as used by the paper.

    "Low Rank Factorizations are Indirect Encodings for Deep Neuroevolution"
    (Garbus & Pollack, 2025). Each generation, the `num_parents` members with the lowest
    loss survive unchanged and are re-evaluated next generation (elitism); the other
    `population_size - num_parents` members are clones of survivors chosen uniformly at
    random, each mutated by Gaussian noise on every evolvable tensor with standard
    deviation `mutation_rate * init_std(tensor)`, where factor tensors (low-rank U and V)
    use `factor_mutation_rate` (default `sqrt(mutation_rate)`, 0.1 for the paper's 0.01).
    Normalization layers are frozen. The initial population is `population_size`
    independent random initialisations. There is no crossover. NaN or infinite losses
    count as the worst. Every member is recorded as (parent index, seed), so any member
    can be rebuilt from the run seed and its chain (`model.rebuild_member`).

    Args:
        population_size: number of members per generation, at least `num_parents + 1`.
            The paper used 512 (256 for CarRacing).
        num_parents: truncation size T, the survivors per generation. The paper used 16.
        mutation_rate: relative mutation strength of full tensors. Defaults to 0.01.
        factor_mutation_rate: relative mutation strength of factor tensors. Defaults to
            `sqrt(mutation_rate)`.
        freeze_normalization: keep normalization layers (LayerNormalization, ...) at
            their initial values, as the paper does. Defaults to True.
        reevaluate_top: two-stage selection (the paper's CarRacing setting): after all
            members are evaluated, the best `reevaluate_top` are evaluated again with
            `reevaluate_episodes` more episodes, ranked by the mean over all their
            episodes, and only they can become parents. None (default) disables it.
            Needs `num_parents <= reevaluate_top <= population_size`. With fixed
            supervised data a second evaluation changes nothing, so it is skipped.
        reevaluate_episodes: episodes of the second stage (the paper: 4).

    Example:

    >>> strategy = keras_lrne.strategies.GA(population_size=64, num_parents=8)
    >>> history = model.evolve(x, y, strategy=strategy, generations=10)
    """

    def __init__(self, population_size, num_parents, mutation_rate=0.01,
                 factor_mutation_rate=None, freeze_normalization=True, reevaluate_top=None,
                 reevaluate_episodes=None):
        check_int("population_size", population_size, 2)
        check_int("num_parents", num_parents, 1)
        if population_size < num_parents + 1:
            raise ValueError(
                "Received an invalid value for `population_size`, expected at least "
                f"num_parents + 1 = {num_parents + 1} so that there is room for children. "
                f"Received: population_size={population_size}, num_parents={num_parents}"
            )
        _check_rate("mutation_rate", mutation_rate)
        if factor_mutation_rate is not None:
            _check_rate("factor_mutation_rate", factor_mutation_rate)
        freeze_normalization = check_bool("freeze_normalization", freeze_normalization)
        if (reevaluate_top is None) != (reevaluate_episodes is None):
            raise ValueError(
                "`reevaluate_top` and `reevaluate_episodes` go together: give both or "
                f"neither. Received: reevaluate_top={reevaluate_top!r}, "
                f"reevaluate_episodes={reevaluate_episodes!r}"
            )
        if reevaluate_top is not None:
            check_int("reevaluate_top", reevaluate_top, num_parents)
            check_int("reevaluate_episodes", reevaluate_episodes, 1)
            if reevaluate_top > population_size:
                raise ValueError(
                    "Received an invalid value for `reevaluate_top`, expected at most "
                    f"population_size={population_size}. Received: "
                    f"reevaluate_top={reevaluate_top}"
                )
        super().__init__(
            GAConfig(
                population_size=int(population_size),
                num_parents=int(num_parents),
                mutation_rate=float(mutation_rate),
                factor_mutation_rate=(
                    None if factor_mutation_rate is None else float(factor_mutation_rate)
                ),
                freeze_normalization=freeze_normalization,
                reevaluate_top=None if reevaluate_top is None else int(reevaluate_top),
                reevaluate_episodes=(
                    None if reevaluate_episodes is None else int(reevaluate_episodes)
                ),
            )
        )

    @property
    def num_parents(self):
        return self.config.num_parents

    @property
    def mutation_rate(self):
        return self.config.mutation_rate

    @property
    def factor_mutation_rate(self):
        rate = self.config.factor_mutation_rate
        return math.sqrt(self.config.mutation_rate) if rate is None else rate

    def noise_stds(self, specs):
        return [
            (self.factor_mutation_rate if s.factor else self.mutation_rate) * s.init_std
            for s in specs
            if s.evolvable
        ]

    def _tell(self, state, losses, rng):
        size, num_parents = self.population_size, self.num_parents
        elites = operators.truncation_selection(losses, num_parents)
        parents = operators.uniform_parents(rng, elites, size - num_parents)
        seeds = operators.child_seeds(rng, size - num_parents)
        population = self._functions.reproduce(state.population, elites, parents, seeds)
        lineage_parents = np.concatenate([elites, parents]).astype(np.int32)
        lineage_seeds = np.concatenate([np.full((num_parents,), -1, np.int32), seeds])
        return list(population), lineage_parents, lineage_seeds

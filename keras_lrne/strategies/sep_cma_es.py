"""Separable CMA-ES (Ros and Hansen, 2008): CMA-ES with a diagonal covariance."""

import math
from typing import NamedTuple

import numpy as np

from keras_lrne.strategies._cma import CMABase


class SepCMAESState(NamedTuple):
    """State of a `SepCMAES` run (numpy, float64; vectors in units of each tensor's
    init std, flattened over the evolvable variables in order).

    Attributes:
        mean: `(n,)`, the search distribution's mean: the centre of the next population.
        sigma: the step size.
        path_sigma: `(n,)`, the conjugate evolution path (step-size adaptation).
        path_c: `(n,)`, the evolution path (rank-one update).
        variances: `(n,)`, the diagonal of the covariance matrix `C`.
        elite: `(n,)`, what `best` returns: the mean evaluated last generation (with
            `mean_evaluation`), else the current mean.
        layout: the variables' shapes, dtypes and init stds (JSON).
        generation: number of completed `tell` calls.
        seed: the run seed.
        losses: the last losses (sanitised), or None.
        best_loss: best finite loss so far.
    """

    mean: np.ndarray
    sigma: float
    path_sigma: np.ndarray
    path_c: np.ndarray
    variances: np.ndarray
    elite: np.ndarray
    layout: str
    generation: int
    seed: int
    losses: object
    best_loss: float


class SepCMAES(CMABase):
    """Separable CMA-ES: CMA-ES with a diagonal covariance matrix (Ros and Hansen, "A
    Simple Modification in CMA-ES Achieving Linear Time and Space Complexity", 2008).

    Members are `mean + sigma * D z` with `z` standard normal and `D^2` the adapted
    per-weight variances; memory and time per generation are linear in the number `n`
    of evolvable numbers (the population itself is `population_size x n`). The
    recombination weights, cumulative step-size adaptation and evolution paths are
    `CMAES`'s; the rank-one and rank-mu updates act on the diagonal only, with the
    learning rates `c_1` and `c_mu` increased by `(n + 2) / 3` as Ros and Hansen
    prescribe (`c_mu` capped at `1 - c_1`).

    As in `CMAES`: the search runs in units of each tensor's init std, the mean starts
    at the model's weights (without a model: the run's first initial member), the
    noise is drawn by numpy from the run seed and the generation (the same on every
    backend; resumed runs continue bit-exactly), members with a NaN or infinite loss
    rank last and get no weight, and with `mean_evaluation` (default) the mean is
    evaluated as one extra, last member and is what the model holds after a generation.

    Args:
        population_size: members per generation (`lambda`), at least 2. Defaults to
            `4 + floor(3 ln n)` for `n` evolvable numbers, resolved by `init` (pass it
            explicitly for `model.evolve()`, which needs the size before `init`).
        sigma: the initial step size, relative to each tensor's init std. Defaults to
            0.1.
        mean_evaluation: evaluate the mean every generation. Defaults to True.

    Returns:
        A strategy for `model.evolve(strategy=...)`, or to drive by hand with
        `init`, `ask`, `tell` and `best`.

    Example:

    >>> strategy = keras_lrne.strategies.SepCMAES(population_size=32, sigma=0.1)
    >>> history = model.evolve(x, y, strategy=strategy, generations=50)
    """

    diagonal = True

    def _initial_state(self, n, mean, seed, layout):
        return SepCMAESState(
            mean=mean, sigma=float(self.config.sigma), path_sigma=np.zeros(n),
            path_c=np.zeros(n), variances=np.ones(n), elite=mean.copy(), layout=layout,
            generation=0, seed=seed, losses=None, best_loss=math.inf,
        )

    def _sample(self, state, z):
        return z * np.sqrt(state.variances)

    def _whiten(self, state, y):
        return y / np.sqrt(state.variances)

    def _adapt(self, state, params, path_c, y, weights, delta, generation):
        c_1, c_mu = params.c_1, params.c_mu
        variances = ((1 + c_1 * delta - c_1 - c_mu) * state.variances
                     + c_1 * path_c ** 2 + c_mu * (weights @ y ** 2))
        variances = np.maximum(variances, np.finfo(np.float64).tiny)
        return state._replace(variances=variances)

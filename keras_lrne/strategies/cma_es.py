"""Hansen's covariance matrix adaptation evolution strategy (CMA-ES)."""

import math
from typing import NamedTuple

import numpy as np

from keras_lrne.strategies._cma import CMABase

#: The most evolvable numbers `CMAES` accepts. Its state holds the covariance matrix and
#: its eigenvectors, two `n x n` float64 matrices (6.4 GB at this limit), and a new
#: eigendecomposition costs `O(n^3)`. Larger models: `SepCMAES` or `SNES` (linear in n).
MAX_WEIGHTS = 20_000


class CMAESState(NamedTuple):
    """State of a `CMAES` run (numpy, float64; vectors in units of each tensor's init
    std, flattened over the evolvable variables in order).

    Attributes:
        mean: `(n,)`, the search distribution's mean: the centre of the next population.
        sigma: the step size.
        path_sigma: `(n,)`, the conjugate evolution path (step-size adaptation).
        path_c: `(n,)`, the evolution path (rank-one update).
        covariance: `(n, n)`, the covariance matrix `C`.
        eigenvectors: `(n, n)`, `B`, the columns of `C = B diag(D^2) B^T` at the last
            eigendecomposition.
        scales: `(n,)`, `D`, the square roots of `C`'s eigenvalues.
        eigen_generation: the generation of the last eigendecomposition.
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
    covariance: np.ndarray
    eigenvectors: np.ndarray
    scales: np.ndarray
    eigen_generation: int
    elite: np.ndarray
    layout: str
    generation: int
    seed: int
    losses: object
    best_loss: float


class CMAES(CMABase):
    """Hansen's covariance matrix adaptation evolution strategy (CMA-ES), as in
    Hansen, "The CMA Evolution Strategy: A Tutorial" (2016), on a model's evolvable
    variables.

    Members are `mean + sigma * B D z` with `z` standard normal and
    `C = B diag(D^2) B^T` the adapted covariance. The `mu = population_size // 2` best
    members are recombined with Hansen's default positive weights
    (`w_i ~ ln((lambda + 1) / 2) - ln i`); the step size follows cumulative step-size
    adaptation; `C` learns from a rank-one update (the evolution path) and a rank-mu
    update, with the tutorial's default learning rates `c_sigma`, `d_sigma`, `c_c`,
    `c_1` and `c_mu`. `C` is eigendecomposed every `max(1, 1 / (10 n (c_1 + c_mu)))`
    generations.

    The search runs in units of each tensor's init std (`sigma=0.1` moves every weight
    by about a tenth of its initial scale); for shapes given without a model (see
    `keras_lrne.strategies.base.as_specs`) this is plain CMA-ES. In `evolve()` the mean
    starts at the weights the model holds (a trained model is a starting point; a fresh
    one starts at its initializers' draw); `init` without `start` starts it at the run's
    first initial member, as `OpenES` does. The noise of a generation is drawn
    by numpy from the run seed and the generation, so a run gives the same results on
    every backend, and a run resumed from a checkpoint continues bit-exactly. Members
    with a NaN or infinite loss rank last and get no recombination weight.

    The covariance is full, so the strategy refuses models with more than
    `MAX_WEIGHTS` (20,000) evolvable numbers; use `SepCMAES` or `SNES` for larger ones.

    With `mean_evaluation` (default) the mean is evaluated every generation as one extra
    member (the last, `num_members = population_size + 1`): after a generation the model
    holds that mean (`best`), and `loss` logs its loss; the best member's loss is logged
    as `best_member_loss` and the step size as `sigma`. Without it the model holds the
    updated mean, which was not evaluated, and `loss` logs the best member's loss.

    Args:
        population_size: members per generation (`lambda`), at least 2. Defaults to
            Hansen's `4 + floor(3 ln n)` for `n` evolvable numbers, resolved by `init`
            (pass it explicitly for `model.evolve()`, which needs the size before `init`).
        sigma: the initial step size, relative to each tensor's init std. Defaults to
            0.1.
        mean_evaluation: evaluate the mean every generation. Defaults to True.

    Returns:
        A strategy for `model.evolve(strategy=...)`, or to drive by hand with
        `init`, `ask`, `tell` and `best`.

    Example:

    >>> strategy = keras_lrne.strategies.CMAES(population_size=16, sigma=0.1)
    >>> history = model.evolve(x, y, strategy=strategy, generations=50)

    Without a model, on a function of a 10-dimensional vector:

    >>> strategy = keras_lrne.strategies.CMAES(sigma=0.5)
    >>> state = strategy.init([(10,)], seed=0)
    >>> for _ in range(100):
    ...     population, state = strategy.ask(state)
    ...     x = keras.ops.convert_to_numpy(population[0])
    ...     state, logs = strategy.tell(state, (x ** 2).sum(axis=1))
    """

    max_weights = MAX_WEIGHTS

    def _initial_state(self, n, mean, seed, layout):
        return CMAESState(
            mean=mean, sigma=float(self.config.sigma), path_sigma=np.zeros(n),
            path_c=np.zeros(n), covariance=np.eye(n), eigenvectors=np.eye(n),
            scales=np.ones(n), eigen_generation=0, elite=mean.copy(), layout=layout,
            generation=0, seed=seed, losses=None, best_loss=math.inf,
        )

    def _sample(self, state, z):
        return (z * state.scales) @ state.eigenvectors.T

    def _whiten(self, state, y):
        b = state.eigenvectors
        return b @ ((b.T @ y) / state.scales)

    def _adapt(self, state, params, path_c, y, weights, delta, generation):
        c_1, c_mu = params.c_1, params.c_mu
        rank_mu = (y.T * weights) @ y
        covariance = ((1 + c_1 * delta - c_1 - c_mu) * state.covariance
                      + c_1 * np.outer(path_c, path_c) + c_mu * rank_mu)
        gap = max(1, int(1 / (10 * params.n * (c_1 + c_mu))))
        if generation - state.eigen_generation < gap:
            return state._replace(covariance=covariance)
        covariance = (covariance + covariance.T) / 2
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        scales = np.sqrt(np.maximum(eigenvalues, np.finfo(np.float64).tiny))
        return state._replace(covariance=covariance, eigenvectors=eigenvectors,
                              scales=scales, eigen_generation=generation)

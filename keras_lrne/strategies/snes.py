"""Separable natural evolution strategy (Schaul et al., 2011) on every evolvable number."""

import dataclasses
import math
from typing import NamedTuple

import numpy as np
from keras import ops

from keras_lrne import backend as lrne_backend
from keras_lrne._validation import check_bool, check_int, check_number
from keras_lrne.strategies import operators
from keras_lrne.strategies._separable import SeparableGaussian, tied_mean


@dataclasses.dataclass(frozen=True)
class SNESConfig:
    population_size: int = None
    sigma: float = 0.1
    center_learning_rate: float = 1.0
    stdev_learning_rate: float = None
    mean_evaluation: bool = True


class SNESState(NamedTuple):
    """State of an `SNES` run.

    Attributes:
        mean: list of tensors, the search distribution's mean (one per variable).
        std: list of tensors, its standard deviation per number (weight units).
        optimizer_variables: empty (SNES steps the mean by its natural gradient).
        elite: what `best` returns: the mean evaluated last generation (with
            `mean_evaluation`), else the best member of it.
        noise_seeds: the seeds of the population last asked (one per member).
        weights: the utilities of the last `tell`, one per member.
        scales: each variable's init std (what `sigma` is relative to).
        generation: number of completed `tell` calls.
        seed: the run seed.
        losses: the last losses (sanitised), or None.
        best_loss: best finite loss so far.
    """

    mean: list
    std: list
    optimizer_variables: list
    elite: list
    noise_seeds: np.ndarray
    weights: np.ndarray
    scales: np.ndarray
    generation: int
    seed: int
    losses: object
    best_loss: float


def default_population_size(num_params):
    """SNES's default population for `num_params` numbers: `4 + floor(3 ln n)`."""
    return 4 + math.floor(3 * math.log(max(1, int(num_params))))


def default_stdev_learning_rate(num_params):
    """SNES's default learning rate of the std: `(3 + ln n) / (5 sqrt n)`."""
    n = max(1, int(num_params))
    return (3 + math.log(n)) / (5 * math.sqrt(n))


def utilities(population_size):
    """SNES's rank-based utilities, best member first:
    `u_k = max(0, ln(P / 2 + 1) - ln k) / sum_j max(0, ln(P / 2 + 1) - ln j) - 1 / P`
    for ranks `k = 1..P` (they sum to 0)."""
    p = int(population_size)
    raw = np.maximum(0.0, math.log(p / 2 + 1) - np.log(np.arange(1, p + 1)))
    return raw / raw.sum() - 1.0 / p


class SNES(SeparableGaussian):
    """The separable natural evolution strategy of Schaul, Glasmachers and Schmidhuber
    (2011), "High Dimensions and Heavy Tails for Natural Evolution Strategies".

    The search distribution is a Gaussian with one standard deviation per evolvable
    number: member `i` is `mean + std * eps_i`, with `eps_i` standard normal,
    regenerated from a per-member seed and never stored. After each generation the
    members are ranked by loss (NaN and inf last; tied losses share their utilities)
    and given SNES's utilities `u_k` (see `utilities`); the natural gradient step is
    `mean += center_learning_rate * std * sum_k u_k eps_k` and
    `std *= exp(stdev_learning_rate / 2 * sum_k u_k (eps_k^2 - 1))`. Memory and time
    are linear in the number of weights.

    The defaults are the paper's: `4 + floor(3 ln n)` members, a mean learning rate of
    1 and a std learning rate of `(3 + ln n) / (5 sqrt n)` for `n` evolvable numbers.
    The mean starts at the weights the model holds when `evolve()` starts (a trained
    model is a starting point; `init` without `start`: the run's first initial member,
    drawn by the layers' initializers from the run seed) and the std at `sigma` times
    each tensor's init std (1 for plain shapes).

    With `mean_evaluation` (default) the mean itself is evaluated every generation (one
    extra member, the last): it is what `best` returns, what the model holds after the
    generation and what `loss` logs (`best_member_loss` logs the best member). Without
    it the model holds the generation's best member. The run records every
    generation's noise seeds and utilities, so any mean or member is rebuilt from the
    starting weights (kept once in the run's `Lineage` and checkpoint) and the run seed
    (`model.rebuild_member(g, None)` is the mean of population `g`), and Ray workers
    receive the starting weights once, then seeds only.

    Args:
        population_size: members sampled per generation (at least 2), or None
            (default) for `4 + floor(3 ln n)`.
        sigma: initial standard deviation, relative to each tensor's init std.
            Defaults to 0.1.
        center_learning_rate: learning rate of the mean. Defaults to 1.
        stdev_learning_rate: learning rate of the std, or None (default) for
            `(3 + ln n) / (5 sqrt n)`.
        mean_evaluation: evaluate the mean every generation. Defaults to True.

    Returns:
        A strategy for `model.evolve(strategy=...)` or for `init`/`ask`/`tell` directly.

    Example:

    >>> strategy = keras_lrne.strategies.SNES(sigma=0.1)
    >>> history = model.evolve(x, y, strategy=strategy, generations=50)
    """

    _DEFAULT_POPULATION = staticmethod(default_population_size)
    _state_type = SNESState

    def __init__(self, population_size=None, sigma=0.1, center_learning_rate=1.0,
                 stdev_learning_rate=None, mean_evaluation=True):
        if population_size is not None:
            population_size = check_int("population_size", population_size, 2)
        sigma = check_number("sigma", sigma)
        center_learning_rate = check_number("center_learning_rate", center_learning_rate)
        if stdev_learning_rate is not None:
            stdev_learning_rate = check_number("stdev_learning_rate", stdev_learning_rate)
        mean_evaluation = check_bool("mean_evaluation", mean_evaluation)
        super().__init__(SNESConfig(
            population_size=population_size, sigma=sigma,
            center_learning_rate=center_learning_rate,
            stdev_learning_rate=stdev_learning_rate, mean_evaluation=mean_evaluation))

    @property
    def num_noise(self):
        """Noise vectors (seeds) per generation: one per member."""
        return self.population_size

    def member_seeds(self, noise_seeds):
        """Per member: its noise seed and sign (always +1)."""
        noise_seeds = np.asarray(noise_seeds, np.int32)
        return noise_seeds, np.ones(len(noise_seeds), np.int32)

    def _shape_weights(self, losses):
        order = np.argsort(operators.sanitize_losses(losses), kind="stable")
        weights = np.empty(len(losses))
        weights[order] = utilities(len(losses))
        return tied_mean(weights, operators.sanitize_losses(losses)).astype(np.float32)

    def _make_update(self, ops_):
        lr_mean = self.config.center_learning_rate
        lr_std = self.config.stdev_learning_rate
        if lr_std is None:
            lr_std = default_stdev_learning_rate(ops_.total)

        def update(mean, std, extra, noise_seeds, weights):
            weights = ops.cast(weights, "float32")
            first, second = ops_.moments(noise_seeds, weights, weights)
            grad_std = second - ops.sum(weights)
            new_mean, new_std = [], []
            for m, s, g_mean, g_std in zip(mean, std, ops_.split(first), ops_.split(grad_std)):
                s = ops.cast(s, "float32")
                step = lr_mean * s * g_mean
                new_mean.append(ops.cast(ops.cast(m, "float32") + step, m.dtype))
                new_std.append(s * ops.exp((0.5 * lr_std) * g_std))
            return new_mean, new_std, list(extra)

        return lrne_backend.get().compile_random(update)

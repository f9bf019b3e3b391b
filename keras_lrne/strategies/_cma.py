"""What `CMAES` and `SepCMAES` share: the parameters of Hansen's CMA-ES, the flat
search space over a model's evolvable tensors, and the ask/tell loop (numpy, float64,
on the host).

The search runs in units of each tensor's init std: a model's weights are the flat
vector `x` with `weight = init_std * x`, so `sigma`, like OpenES's, is relative to each
tensor's scale (a shape given without a `VariableSpec` has init std 1: plain CMA-ES).
The noise of generation `g` is drawn by numpy from `(run seed, g)`, so a run is the
same on every backend and a resumed run continues bit-exactly.
"""

import dataclasses
import json
import math

import numpy as np
from keras import ops

from keras_lrne import genome
from keras_lrne._validation import check_bool, check_int, check_number
from keras_lrne.strategies import operators
from keras_lrne.strategies.base import Strategy, as_specs

#: The numpy stream of the strategies' per-generation noise (see
#: `operators.generation_rng`).
_NOISE_STREAM = 5


def default_population_size(num_weights):
    """Hansen's default population size, `4 + floor(3 ln n)`, for `n` evolvable numbers."""
    return 4 + math.floor(3 * math.log(max(1, int(num_weights))))


@dataclasses.dataclass(frozen=True)
class CMAParameters:
    """The strategy parameters of CMA-ES for `n` numbers and `population_size` members
    (Hansen, "The CMA Evolution Strategy: A Tutorial", 2016, table 1, with the positive
    recombination weights `w_i ~ ln((lambda + 1) / 2) - ln i`, `i <= mu`).

    With `diagonal` the covariance learning rates are those of Ros and Hansen (2008),
    `c_1` and `c_mu` times `(n + 2) / 3` (the diagonal has `n` free numbers, not
    `n (n + 1) / 2`), `c_mu` capped at `1 - c_1`.
    """

    n: int
    population_size: int
    mu: int
    weights: np.ndarray
    mu_eff: float
    c_sigma: float
    d_sigma: float
    c_c: float
    c_1: float
    c_mu: float
    chi_n: float

    @classmethod
    def of(cls, n, population_size, diagonal=False):
        lam = int(population_size)
        mu = lam // 2
        raw = math.log((lam + 1) / 2) - np.log(np.arange(1, mu + 1))
        weights = raw / raw.sum()
        mu_eff = 1.0 / float(np.sum(weights ** 2))
        c_sigma = (mu_eff + 2) / (n + mu_eff + 5)
        d_sigma = 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + c_sigma
        c_c = (4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n)
        c_1 = 2 / ((n + 1.3) ** 2 + mu_eff)
        c_mu = min(1 - c_1, 2 * (mu_eff - 2 + 1 / mu_eff) / ((n + 2) ** 2 + mu_eff))
        if diagonal:
            c_1 = min(1.0, c_1 * (n + 2) / 3)
            c_mu = min(1 - c_1, c_mu * (n + 2) / 3)
        chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
        return cls(n=n, population_size=lam, mu=mu, weights=weights, mu_eff=mu_eff,
                   c_sigma=c_sigma, d_sigma=d_sigma, c_c=c_c, c_1=c_1, c_mu=c_mu,
                   chi_n=chi_n)


@dataclasses.dataclass(frozen=True)
class CMAConfig:
    population_size: int = None
    sigma: float = 0.1
    mean_evaluation: bool = True


def num_weights(specs):
    """The number of evolvable numbers in `specs`."""
    return sum(int(np.prod(s.shape)) for s in specs)


def initial_mean(specs, seed, start=None):
    """The starting mean, flat, in units of each tensor's init std: `start` (the weights
    the run starts from: the model's, in `evolve()`), or without it the run's first
    initial member."""
    values = genome.initial_member(specs, seed, 0) if start is None else start
    return np.concatenate([np.asarray(v, np.float64).reshape(-1) / float(s.init_std)
                           for v, s in zip(values, specs)])


def unflatten(flat, specs):
    """Flat vectors in init-std units -> one tensor per spec, in its dtype. `flat` is
    `(n,)` (one weight set) or `(members, n)` (a population)."""
    lead = flat.shape[:-1]
    tensors, offset = [], 0
    for s in specs:
        size = int(np.prod(s.shape))
        piece = flat[..., offset: offset + size] * float(s.init_std)
        offset += size
        tensors.append(ops.convert_to_tensor(
            np.ascontiguousarray(piece.reshape(*lead, *s.shape)).astype(s.dtype)))
    return tensors


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What `unflatten` needs of a `VariableSpec`."""

    shape: tuple
    dtype: str
    init_std: float


def layout_of(specs):
    """The specs' shapes, dtypes and init stds as a JSON string (a state field that
    checkpoints save as is)."""
    return json.dumps([[list(s.shape), str(s.dtype), float(s.init_std)] for s in specs])


def specs_of(layout):
    """The inverse of `layout_of`: objects with `shape`, `dtype` and `init_std`."""
    return [_Layout(tuple(shape), dtype, init_std)
            for shape, dtype, init_std in json.loads(layout)]


def generation_noise(seed, generation, population_size, n):
    """The standard normal `z` of a generation, `(population_size, n)` float64."""
    rng = operators.generation_rng(seed, generation, stream=_NOISE_STREAM)
    return rng.standard_normal((population_size, n))


def recombination_weights(losses, params):
    """`(order, weights)`: the indices of the `mu` best members (lowest loss first) and
    their recombination weights. Members with a non-finite loss get no weight (the
    others' weights are renormalised); `(order, None)` when no member has a finite loss."""
    order = np.argsort(losses, kind="stable")[: params.mu]
    weights = np.where(np.isfinite(losses[order]), params.weights, 0.0)
    total = weights.sum()
    if total <= 0:
        return order, None
    return order, weights / total


class CMABase(Strategy):
    """The ask/tell loop of `CMAES` and `SepCMAES`; subclasses give the covariance
    model (`_sample`, `_whiten`, `_adapt`) and the state type."""

    diagonal = False
    #: Largest number of evolvable numbers accepted (None: no limit).
    max_weights = None

    def __init__(self, population_size=None, sigma=0.1, mean_evaluation=True):
        population_size = check_int("population_size", population_size, 2, allow_none=True)
        sigma = check_number("sigma", sigma)
        mean_evaluation = check_bool("mean_evaluation", mean_evaluation)
        super().__init__(CMAConfig(population_size=population_size, sigma=sigma,
                                   mean_evaluation=mean_evaluation))
        # The default population size depends on the model (4 + floor(3 ln n)): it is
        # resolved by `init` and remembered here; everything else lives in the state.
        self._default_population_size = None

    @property
    def population_size(self):
        size = self.config.population_size or self._default_population_size
        if size is None:
            raise ValueError(
                f"{self.__class__.__name__}(population_size=None) takes Hansen's default "
                "population size 4 + floor(3 ln n) from the number n of evolvable numbers, "
                "which is known once `init()` has run (`model.evolve()` resolves it). "
                "Before that, `num_members_for(specs)` gives the member count, and "
                f"`{self.__class__.__name__}.default_population_size(n)` the size. "
                "Received: population_size=None"
            )
        return size

    @staticmethod
    def default_population_size(num_weights):
        """Hansen's default population size `4 + floor(3 ln n)` for `n` numbers."""
        return default_population_size(check_int("num_weights", num_weights))

    @property
    def num_members(self):
        return self.population_size + int(self.config.mean_evaluation)

    def num_members_for(self, specs):
        size = self.config.population_size or default_population_size(
            num_weights(as_specs(specs)))
        return size + int(self.config.mean_evaluation)

    def parameters(self, n):
        """The `CMAParameters` of a run on `n` evolvable numbers."""
        size = self.config.population_size or default_population_size(n)
        return CMAParameters.of(n, size, self.diagonal)

    # -- the contract ----------------------------------------------------------------
    def _init(self, specs, seed, start=None):
        n = num_weights(specs)
        if self.max_weights is not None and n > self.max_weights:
            raise ValueError(
                f"{self.__class__.__name__} adapts a full {n} x {n} covariance matrix, and "
                f"the model has n={n} evolvable numbers, more than its limit of "
                f"{self.max_weights} (`keras_lrne.strategies.cma_es.MAX_WEIGHTS`). Use "
                "`keras_lrne.strategies.SepCMAES` (diagonal covariance) or `SNES`, whose "
                f"memory is linear in n. Received: {n} evolvable numbers in "
                f"{len(specs)} variables"
            )
        if self.config.population_size is None:
            self._default_population_size = default_population_size(n)
        mean = initial_mean(specs, seed, start)
        return self._initial_state(n, mean, seed, layout_of(specs))

    def _ask(self, state):
        params = self.parameters(state.mean.shape[0])
        z = generation_noise(state.seed, state.generation, params.population_size, params.n)
        members = state.mean[None, :] + state.sigma * self._sample(state, z)
        if self.config.mean_evaluation:  # the mean is the last member
            members = np.concatenate([members, state.mean[None, :]], axis=0)
        return unflatten(members, specs_of(state.layout)), state

    def _tell(self, state, losses):
        params = self.parameters(state.mean.shape[0])
        size = params.population_size
        members = losses[:size]
        logs = {"best_member_loss": float(members.min()), "sigma": float(state.sigma)}
        if self.config.mean_evaluation:
            elite = state.mean
            logs["loss"] = float(losses[size])
        else:
            elite = None
            logs["loss"] = float(members.min())
        order, weights = recombination_weights(members, params)
        if weights is None:  # no finite loss: nothing to learn from
            return state._replace(elite=state.mean if elite is None else elite), logs
        z = generation_noise(state.seed, state.generation, size, params.n)[order]
        y = self._sample(state, z)                      # (mu, n): (x_i - m) / sigma
        y_w = weights @ y
        mean = state.mean + state.sigma * y_w
        g = state.generation + 1                        # generations completed after this
        path_sigma = ((1 - params.c_sigma) * state.path_sigma
                      + math.sqrt(params.c_sigma * (2 - params.c_sigma) * params.mu_eff)
                      * self._whiten(state, y_w))
        norm = float(np.linalg.norm(path_sigma))
        h_sigma = float(norm / math.sqrt(1 - (1 - params.c_sigma) ** (2 * g))
                        < (1.4 + 2 / (params.n + 1)) * params.chi_n)
        path_c = ((1 - params.c_c) * state.path_c
                  + h_sigma * math.sqrt(params.c_c * (2 - params.c_c) * params.mu_eff) * y_w)
        delta = (1 - h_sigma) * params.c_c * (2 - params.c_c)
        state = self._adapt(state, params, path_c, y, weights, delta, g)
        sigma = state.sigma * math.exp(
            (params.c_sigma / params.d_sigma) * (norm / params.chi_n - 1))
        if not math.isfinite(sigma) or sigma <= 0:
            raise FloatingPointError(
                f"{self.__class__.__name__}'s step size became {sigma} at generation "
                f"{state.generation}: the losses give the search no direction.")
        state = state._replace(mean=mean, sigma=float(sigma), path_sigma=path_sigma,
                               path_c=path_c, elite=mean if elite is None else elite)
        return state, logs

    def _best(self, state):
        return unflatten(state.elite, specs_of(state.layout))

    # -- to implement --------------------------------------------------------------------
    def _initial_state(self, n, mean, seed, layout):
        raise NotImplementedError

    def _sample(self, state, z):
        """`B D z` (rows of `z`): the steps `(x - m) / sigma` of standard normal `z`."""
        raise NotImplementedError

    def _whiten(self, state, y):
        """`C^(-1/2) y`."""
        raise NotImplementedError

    def _adapt(self, state, params, path_c, y, weights, delta, generation):
        """The state with the covariance updated (rank one and rank mu)."""
        raise NotImplementedError

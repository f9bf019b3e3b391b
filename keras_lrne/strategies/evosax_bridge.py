"""`Evosax`: any evosax 0.3 algorithm as a keras-lrne strategy, on the JAX backend.

The module is named `evosax_bridge` so that it does not shadow the `evosax` package.
evosax is an optional dependency (the `evosax` extra), imported only when an `Evosax`
strategy is made; what the bridge does with JAX is in `keras_lrne.backend.jax.evosax`.
"""

import dataclasses
import inspect
import math
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_lrne import _optional, genome
from keras_lrne._validation import check_int
from keras_lrne.strategies.base import Strategy, spec_signature, specs_of

#: evosax algorithms the bridge refuses, and why.
_UNSUPPORTED = {
    name: "runs `num_populations` populations of `population_size` members at once "
          "(Stein variational ES)" for name in ("SV_CMA_ES", "SV_Open_ES")
}

#: Streams of the PRNG keys derived from (run seed, generation).
_ASK, _TELL, _INIT = 0, 1, 2


def _jax_side():
    """`keras_lrne.backend.jax.evosax` (imported once the backend is known to be JAX)."""
    from keras_lrne.backend.jax import evosax as jax_evosax

    return jax_evosax


def _evosax_algorithms():
    """evosax's `{name: class}` of algorithms, or a clear `ImportError`."""
    module = _optional.require("evosax.algorithms", "Evosax strategies", "evosax",
                               packages="evosax")
    return module.algorithms


@dataclasses.dataclass(frozen=True)
class EvosaxConfig:
    name: str
    population_size: int
    kwargs: tuple = ()


class EvosaxState(NamedTuple):
    """State of an `Evosax` run.

    Attributes:
        evosax_state: evosax's state pytree, flattened (`jax.tree_util.tree_flatten`)
            into a list of arrays; its structure comes from the algorithm (a fresh
            `init`), so a checkpoint holds arrays only. Empty for a population-based
            algorithm (`SimpleGA`, `DiffusionEvolution`, ...) until its first `tell`:
            evosax initialises those from an evaluated population, the run's initial
            members.
        population: the flat `(population_size, n)` population of the last `ask`
            (what evosax's `tell` takes), None after `tell`.
        signature: the evolvable variables' `spec_signature`.
        generation: number of completed `tell` calls.
        seed: the run seed.
        losses: the last losses (sanitised), or None.
        best_loss: best finite loss so far.
    """

    evosax_state: list
    population: object
    signature: str
    generation: int
    seed: int
    losses: object
    best_loss: float


def _split_kwargs(cls, kwargs):
    """`(constructor kwargs, params kwargs)`: a keyword of the algorithm's constructor
    goes to it, any other replaces a field of its `default_params`."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    constructor = {k: v for k, v in kwargs.items() if k in accepted}
    params = {k: v for k, v in kwargs.items() if k not in accepted}
    return constructor, params


def _check_params(default_params, params, cls):
    fields = [f.name for f in dataclasses.fields(default_params)]
    unknown = sorted(set(params) - set(fields))
    if unknown:
        accepted = sorted(set(inspect.signature(cls.__init__).parameters)
                          - {"self", "population_size", "solution"})
        raise ValueError(
            f"Received an invalid keyword for evosax's {cls.__name__}: {unknown}. "
            f"Expected a keyword of its constructor ({accepted}) or a field of its "
            f"default_params ({fields}). Received: kwargs={params!r}"
        )


class Evosax(Strategy):
    """Any evosax 0.3 algorithm (`evosax.algorithms`: `"CMA_ES"`, `"Sep_CMA_ES"`,
    `"xNES"`, `"SNES"`, `"PGPE"`, `"SimpleGA"`, `"DiffusionEvolution"`, ...) on a
    model's evolvable variables, flattened into one vector, through `model.evolve()`
    (callbacks, History, checkpoints). JAX backend only; install it with
    `pip install "keras-lrne[evosax]"`.

    The algorithm searches the model's weights themselves (not in units of each tensor's
    init std, as the native `CMAES` does), so its own parameters (e.g. `std_init`) are
    in weight units. A distribution-based algorithm (CMA-ES, NES, PGPE, ...) starts its
    mean at the run's first initial member (`keras_lrne.genome.initial_member(specs,
    seed, 0)`); a population-based one (GA, DE, PSO, diffusion evolution, ...) is
    initialised by evosax from an evaluated population, so its first generation
    evaluates the run's initial members `0 .. population_size - 1`.

    evosax minimises, as keras-lrne does: it is told the losses. A NaN or infinite loss
    is told as the generation's worst finite loss (it ranks last, with the worst
    members); a generation without any finite loss is not told to evosax at all (its
    state stays as it was; the next generation asks with new keys). evosax's PRNG keys
    derive from (run seed, generation), so a run repeats exactly, and a checkpoint
    holds evosax's state pytree (as a list of arrays), so a resumed run continues
    bit-exactly.

    `best(state)` (what the model holds after a generation) is the algorithm's mean
    where it has one (distribution-based algorithms; the mean is not evaluated, and
    `loss` logs the generation's lowest loss), else evosax's best solution so far
    (population-based algorithms; `loss` logs its loss).

    Args:
        name: the algorithm's name in `evosax.algorithms.algorithms`, e.g. `"CMA_ES"`.
        population_size: members per generation.
        **kwargs: passed on to evosax: a keyword of the algorithm's constructor (e.g.
            `num_generations` of `DiffusionEvolution`) goes to it, any other replaces
            the field of that name in its `default_params` (e.g. `std_init=0.5`). Keep
            them JSON-able (numbers, strings) for `get_config` and `BackupAndRestore`.

    Raises:
        RuntimeError: on a backend other than JAX.
        ImportError: when evosax is not installed.
        ValueError: for an unknown algorithm name (the message lists them), a bad
            population size, a keyword the algorithm does not take or a required one
            missing (e.g. `RandomSearch`'s `sampling_fn`). The Stein variational
            algorithms (`"SV_CMA_ES"`, `"SV_Open_ES"`), which run several populations
            at once, are refused; the other 34 of evosax 0.3.2's 36 run.

    Example:

    >>> strategy = keras_lrne.strategies.Evosax("CMA_ES", 16, std_init=0.5)
    >>> history = model.evolve(x, y, strategy=strategy, generations=50)

    Without a model, on a function of a 10-dimensional vector:

    >>> strategy = keras_lrne.strategies.Evosax("SimpleGA", 32)
    >>> state = strategy.init([(10,)], seed=0)
    >>> for _ in range(100):
    ...     population, state = strategy.ask(state)
    ...     x = keras.ops.convert_to_numpy(population[0])
    ...     state, logs = strategy.tell(state, (x ** 2).sum(axis=1))
    """

    def __init__(self, name, population_size, **kwargs):
        if keras.config.backend() != "jax":
            raise RuntimeError(
                "`Evosax` runs evosax's algorithms, which are written in JAX: it needs the "
                "JAX backend. Set `KERAS_BACKEND=jax` before importing Keras, or use a "
                "native strategy (CMAES, SepCMAES, SNES, PGPE, OpenES, GA), which run on "
                f"every backend. Received: backend={keras.config.backend()!r}"
            )
        algorithms = _evosax_algorithms()
        if name not in algorithms:
            raise ValueError(
                f"Received an invalid value for `name`, expected the name of an evosax "
                f"algorithm, one of {sorted(algorithms)}. Received: name={name!r}"
            )
        if name in _UNSUPPORTED:
            raise ValueError(
                f"Received an invalid value for `name`: evosax's {name} {_UNSUPPORTED[name]}, "
                f"which `Evosax` does not bridge. Received: name={name!r}"
            )
        population_size = check_int("population_size", population_size)
        cls = algorithms[name]
        constructor, params = _split_kwargs(cls, kwargs)
        missing = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                   if p.default is inspect.Parameter.empty
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   and p.name not in ("self", "population_size", "solution", *kwargs)]
        if missing:
            raise ValueError(
                f"evosax's {name} needs the keyword argument(s) {missing}: pass them to "
                f"`Evosax` (e.g. `Evosax({name!r}, {population_size}, "
                f"{missing[0]}=...)`). Received: kwargs={kwargs!r}"
            )
        for reserved in ("population_size", "solution"):
            if reserved in constructor:
                raise ValueError(
                    f"Received an invalid keyword for `Evosax`: {reserved!r} is set by "
                    f"the strategy. Received: {reserved}={constructor[reserved]!r}"
                )
        if params:
            _check_params(_jax_side().default_params(cls, population_size, constructor),
                          params, cls)
        super().__init__(EvosaxConfig(name=name, population_size=population_size,
                                      kwargs=tuple(sorted(kwargs.items()))))

    def get_config(self):
        return {"name": self.config.name, "population_size": self.config.population_size,
                **dict(self.config.kwargs)}

    def _algorithm(self, n):
        """The evosax algorithm of this configuration on `n` numbers (cached)."""
        cls = _evosax_algorithms()[self.config.name]

        def build():  # the keywords were checked by `__init__`
            constructor, params = _split_kwargs(cls, dict(self.config.kwargs))
            return _jax_side().Algorithm(cls, self.config.population_size, n,
                                         constructor, params)

        return self.cached("evosax", build, int(n))

    @staticmethod
    def _size(specs):
        return sum(int(np.prod(s.shape)) for s in specs)

    def _init(self, specs, seed):
        n = self._size(specs)
        algorithm = self._algorithm(n)
        leaves = []
        if not algorithm.population_based:
            mean = np.concatenate([np.asarray(v, np.float32).reshape(-1)
                                   for v in genome.initial_member(specs, seed, 0)])
            leaves = algorithm.init(_jax_side().key(seed, 0, _INIT), mean)
        return EvosaxState(evosax_state=leaves, population=None,
                           signature=spec_signature(specs), generation=0, seed=int(seed),
                           losses=None, best_loss=math.inf)

    def _ask(self, state):
        specs = specs_of(state.signature)
        algorithm = self._algorithm(self._size(specs))
        leaves = state.evosax_state
        if not leaves:
            # Population-based, not yet initialised: evaluate initial members (a fresh
            # set each generation until one has a finite loss).
            size = self.config.population_size
            first = state.generation * size
            values = genome.initial_members(specs, state.seed, range(first, first + size))
            population = _jax_side().as_array(np.concatenate(
                [np.asarray(v, np.float32).reshape(size, -1) for v in values], axis=1))
        else:
            # evosax's `ask` may update its state too (e.g. CMA-ES's eigendecomposition).
            population, leaves = algorithm.ask(
                _jax_side().key(state.seed, state.generation, _ASK), leaves)
        return self._split(population, specs), state._replace(evosax_state=leaves,
                                                              population=population)

    def _tell(self, state, losses):
        if state.population is None:
            raise ValueError("`Evosax.tell` needs the state the last `ask` returned.")
        specs = specs_of(state.signature)
        algorithm = self._algorithm(self._size(specs))
        finite = np.isfinite(losses)
        logs = {}
        leaves = state.evosax_state
        if finite.any():
            fitness = np.where(finite, losses, losses[finite].max())
            leaves, best = algorithm.tell(_jax_side().key(state.seed, state.generation, _TELL),
                                          state.population, fitness, leaves)
            if best is not None:
                logs["loss"] = best
        return state._replace(evosax_state=leaves, population=None), logs

    def _best(self, state):
        specs = specs_of(state.signature)
        algorithm = self._algorithm(self._size(specs))
        if not state.evosax_state:
            return [ops.convert_to_tensor(v) for v in genome.initial_member(specs, state.seed, 0)]
        flat = algorithm.solution(state.evosax_state)
        return [member[0] for member in self._split(flat[None], specs)]

    @staticmethod
    def _split(flat, specs):
        """`(members, n)` -> one `(members, *shape)` tensor per spec, in its dtype."""
        members = flat.shape[0]
        tensors, offset = [], 0
        for s in specs:
            size = int(np.prod(s.shape))
            piece = ops.reshape(flat[:, offset: offset + size], (members, *s.shape))
            tensors.append(ops.cast(piece, s.dtype))
            offset += size
        return tensors

"""The `Strategy` base class: the ask/tell contract every strategy implements."""

import collections
import dataclasses
import hashlib
import inspect
import json
import math

import numpy as np

from keras_lrne import genome
from keras_lrne._validation import check_int, is_int
from keras_lrne.strategies import operators


def as_specs(specs):
    """The evolvable `VariableSpec`s of `specs`, which may also be plain shapes.

    A strategy works on a list of tensors described by `keras_lrne.genome.VariableSpec`
    (what `evolve()` passes: one per evolvable variable of the model). For use without a
    model, a shape (a tuple, or an int for a vector) stands for a float32 tensor drawn
    from `N(0, 1)` with init std 1.

    Args:
        specs: a list of `VariableSpec`s and/or shapes.

    Returns:
        The list of evolvable `VariableSpec`s.
    """
    if isinstance(specs, (genome.VariableSpec, tuple)) or is_int(specs):
        specs = [specs]
    result = []
    for i, spec in enumerate(specs):
        if isinstance(spec, genome.VariableSpec):
            if spec.evolvable:
                result.append(spec)
            continue
        shape = (spec,) if is_int(spec) else spec
        if not isinstance(shape, (tuple, list)) or not all(is_int(d) and d >= 1 for d in shape):
            raise ValueError(
                "Received an invalid value for `specs`, expected `VariableSpec`s or shapes "
                f"(tuples of positive integers). Received: specs[{i}]={spec!r}"
            )
        result.append(genome.VariableSpec(index=i, path=f"variable_{i}",
                                          shape=tuple(int(d) for d in shape),
                                          dtype="float32", init_std=1.0, factor=False,
                                          evolvable=True))
    if not result:
        raise ValueError(f"Received no evolvable variables. Received: specs={specs!r}")
    return result


def check_start(specs, start):
    """`start` (one array per evolvable spec, or None) as numpy arrays in the specs'
    dtypes, after checking that it has one array of the right shape per spec."""
    if start is None:
        return None
    start = list(start)
    shapes = [tuple(int(d) for d in np.shape(v)) for v in start]
    expected = [tuple(s.shape) for s in specs]
    if shapes != expected:
        raise ValueError(
            "Received an invalid value for `start`, expected one array per evolvable "
            f"variable, of shapes {expected}. Received: start with shapes {shapes}"
        )
    from keras import ops

    return [np.asarray(ops.convert_to_numpy(v), dtype=s.dtype) for v, s in zip(start, specs)]


#: Compiled operators of every strategy, keyed by (strategy class, configuration, name,
#: variable signature, ...): the instance holds configuration only, so one strategy
#: object serves any number of runs, and a state can be asked by any object of the same
#: configuration. Least recently used entries go beyond `OPERATOR_CACHE_SIZE` (they are
#: rebuilt, with the same numbers, if asked again).
_OPERATORS = collections.OrderedDict()
OPERATOR_CACHE_SIZE = 64
#: The specs of every signature `spec_signature` gave (small: shapes and initializers).
_SPECS = {}


def _spec_key(spec):
    initializer = spec.initializer
    if initializer is not None:
        initializer = (type(initializer).__module__, type(initializer).__qualname__,
                       json.dumps(initializer.get_config(), sort_keys=True, default=repr))
    return (int(spec.index), spec.path, tuple(int(d) for d in spec.shape), str(spec.dtype),
            float(spec.init_std), bool(spec.factor), bool(spec.evolvable), initializer,
            bool(spec.lora))


def spec_signature(specs):
    """A short string that names the evolvable variables `specs` (shapes, dtypes, init
    stds, factors, initializers): what a strategy keeps in its state to find its
    compiled operators (`Strategy.cached`) and its specs (`specs_of`) again, so that the
    instance holds configuration only. Equal specs give equal signatures.

    Args:
        specs: `VariableSpec`s and/or shapes (see `as_specs`).

    Returns:
        The signature, a string (a JSON-able state field, saved by checkpoints).
    """
    specs = as_specs(specs)
    text = repr([_spec_key(s) for s in specs])
    signature = hashlib.sha256(text.encode()).hexdigest()[:24]
    _SPECS.setdefault(signature, specs)
    return signature


def specs_of(signature):
    """The `VariableSpec`s that `spec_signature` named `signature`.

    Raises:
        ValueError: for a signature this process has not seen (a state from another
            process, before any `init` with its specs).
    """
    try:
        return _SPECS[signature]
    except KeyError:
        raise ValueError(
            "Received an invalid value for `signature`, expected the signature of "
            "variables a strategy's `init` has seen in this process (call `init` with the "
            f"run's specs first, e.g. to make a checkpoint's template). "
            f"Received: signature={signature!r}"
        ) from None


def replace_state(state, **changes):
    """A copy of `state` (a NamedTuple or a frozen dataclass) with some fields changed."""
    if dataclasses.is_dataclass(state):
        return dataclasses.replace(state, **changes)
    return state._replace(**changes)


def state_fields(state):
    """`{field: value}` of a NamedTuple or dataclass state."""
    if dataclasses.is_dataclass(state):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return dict(state._asdict())


class Strategy:
    """Base class of population strategies: `init`, `ask`, `tell` and `best`.

    A strategy is an optimiser over a list of tensors (the model's evolvable variables),
    in the style of evosax and optax: it owns an explicit, immutable state (a NamedTuple
    or frozen dataclass of arrays and scalars) and its own compiled operators, and is
    testable on any function of tensors, without a model. `model.evolve()` only evaluates
    what `ask` returns and passes the losses to `tell`.

    Subclasses implement:

    - `_init(specs, seed) -> state`: the state of a new run. The state type must have the
      fields `generation`, `losses` and `best_loss`, which this class maintains. An
      `_init(specs, seed, start=None)` receives the weights the run starts from (see
      `init`), and then `rebuild` and a worker protocol's `worker_init` take `start` too.
    - `_ask(state) -> (population, state)`: the members to evaluate: a list with one
      `(members, *shape)` tensor per spec, or a `keras_lrne.genome.PopulationRecipe`
      (shared weights plus per-member records and the function that expands them:
      what lets a population grow without its memory growing).
    - `_tell(state, losses) -> (state, logs)`: the next state from one loss per member
      (already sanitised: NaN and inf are +inf). `logs` may hold `"loss"`, the loss of
      the weights `best` returns (default: the lowest loss).
    - `_best(state) -> weights`: what the model should hold after a generation.

    and may implement `record(state)` (the compact genome of the last generation, for
    `Lineage`) and `rebuild(...)`. They keep their hyper-parameters in a frozen dataclass
    `config`, which `get_config()` returns as a dict, and nothing else on `self`: what a
    run needs lives in its state (e.g. its `spec_signature`), and compiled operators in
    `cached(...)`, keyed by that signature, so one strategy object can serve two runs
    and `ask` works on any state of its configuration. Checkpoints save any state
    generically: arrays, lists of arrays, and JSON-able scalars.

    What this class does for every strategy: losses that are NaN or inf count as the
    worst (+inf) and never become the best; the generation counter; the best finite loss
    so far (`state.best_loss`); checks of the loss vector's shape.

    Args:
        config: the strategy's frozen dataclass of hyper-parameters.
    """

    def __init__(self, config):
        self.config = config

    @property
    def population_size(self):
        return self.config.population_size

    @property
    def num_members(self):
        """Members `ask` returns per generation (the population size by default)."""
        return self.population_size

    def num_members_for(self, specs):
        """Members `ask` will return per generation in a run on `specs`, known before
        `init`: what `evolve()` plans its evaluation with. `num_members` by default; a
        strategy whose default population size follows from the number of evolvable
        numbers (`CMAES`, `SepCMAES`, `SNES`) computes it from `specs`.

        Args:
            specs: the evolvable variables (`VariableSpec`s or shapes, as for `init`).

        Returns:
            The number of members per generation.
        """
        return self.num_members

    @property
    def selects_by_truncation(self):
        """Whether only the `num_parents` lowest losses of a generation matter to `tell`
        (truncation selection: the rest may all be +inf). What two-stage selection
        (an environment's `reevaluate_top`) needs, since it gives every member outside
        the re-evaluated top the worst loss; a strategy that declares it True also has
        `num_parents`. False by default."""
        return False

    def get_config(self):
        return dataclasses.asdict(self.config)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _config_key(self):
        return (type(self).__module__, type(self).__qualname__,
                json.dumps(self.get_config(), sort_keys=True, default=repr))

    def cached(self, name, build, *key):
        """The operators `build()` returns, built once per strategy class,
        configuration, `name` and `key` (e.g. a `spec_signature` and anything else the
        operators depend on), and shared by every strategy object of that configuration.

        Keep compiled operators here (or derive them from the state), not on `self`:
        the instance holds configuration only, so one object can serve two runs at once
        and `ask` works on any state of its configuration.
        """
        cache_key = (self._config_key(), name, *key)
        if cache_key in _OPERATORS:
            _OPERATORS.move_to_end(cache_key)
            return _OPERATORS[cache_key]
        value = build()
        _OPERATORS[cache_key] = value
        while len(_OPERATORS) > OPERATOR_CACHE_SIZE:
            _OPERATORS.popitem(last=False)
        return value

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.__class__.__name__}({args})"

    # -- the contract --------------------------------------------------------------------
    @property
    def starts_from_weights(self):
        """Whether the run's starting weights matter to this strategy: True when its
        `_init` takes a `start` argument (`CMAES`, `SepCMAES`, `SNES`, `PGPE`, whose
        mean starts at the model's weights). `evolve()` then passes the weights the
        model holds when it starts, and keeps them with the run (its `Lineage`, its
        checkpoint, its Ray workers) wherever members are rebuilt."""
        return "start" in inspect.signature(self._init).parameters

    def init(self, specs, seed, distribution=None, start=None):
        """The state of a new run.

        Args:
            specs: the evolvable variables, as `keras_lrne.genome.VariableSpec`s (what
                `evolve()` passes) or shapes (see `as_specs`).
            seed: the run seed, a non-negative integer. Everything random in the run
                derives from it.
            distribution: the `keras_lrne.distribution.PopulationParallel` the run
                splits its population over, or None (one device). Passed on to `_init`
                when it declares a `distribution` argument (a strategy that places its
                population on those devices keeps what it needs in the state or its
                cached operators, never on `self`). Strategies never look it up globally.
            start: the weights the run starts from, one array per evolvable variable
                (`evolve()` passes the weights the model holds when it starts), or None.
                Passed on to `_init` when it declares a `start` argument (see
                `starts_from_weights`); such a strategy starts its mean there, and at
                the run's first initial member (`keras_lrne.genome.initial_member(specs,
                seed, 0)`) when `start` is None. Others (`GA`, `OpenES`) ignore it.

        Returns:
            The strategy's state.
        """
        specs = as_specs(specs)
        seed = check_int("seed", seed, minimum=0)
        kwargs = {}
        parameters = inspect.signature(self._init).parameters
        if "distribution" in parameters:
            kwargs["distribution"] = distribution
        if "start" in parameters:
            kwargs["start"] = check_start(specs, start)
        return self._init(specs, seed, **kwargs)

    def ask(self, state):
        """Returns `(population, state)`: the members to evaluate next.

        `population` is a `keras_lrne.genome.PopulationRecipe` (the built-in
        strategies: shared weights plus what makes each member, expanded by the engine
        one chunk at a time inside its compiled evaluation), or a list with one
        `(num_members, *shape)` tensor per variable. A recipe also indexes like that
        list (`population[j]` materialises variable `j`).
        """
        population, state = self._ask(state)
        size = genome.population_size(population)
        if size != self.num_members:
            raise ValueError(
                f"{self.__class__.__name__}.ask returned {size} members, expected "
                f"num_members={self.num_members}."
            )
        if not isinstance(population, genome.PopulationRecipe):
            population = list(population)
        return population, state

    def tell(self, state, losses):
        """Returns `(state, logs)` given one loss per member of the last `ask`.

        NaN and infinite losses count as the worst. `logs["loss"]` is the loss of the
        weights `best(state)` returns.
        """
        losses = operators.sanitize_losses(losses)
        if losses.shape != (self.num_members,):
            raise ValueError(
                f"Expected one loss per member, shape ({self.num_members},). "
                f"Received: losses.shape={losses.shape}"
            )
        state, logs = self._tell(state, losses)
        logs = dict(logs or {})
        finite = losses[np.isfinite(losses)]
        logs.setdefault("loss", float(finite.min()) if finite.size else math.inf)
        best = state.best_loss
        if math.isfinite(logs["loss"]):
            best = min(best, logs["loss"])
        state = replace_state(state, generation=state.generation + 1, losses=losses,
                              best_loss=float(best))
        return state, logs

    def best(self, state):
        """The weights the model should hold after a generation: one tensor per variable
        (without the population axis)."""
        return list(self._best(state))

    def record(self, state):
        """The compact genome of the last `tell`: a dict of 1-D integer or float arrays
        (e.g. the GA's parents and seeds) that `Lineage` stores per generation. Empty
        for strategies that keep none."""
        return {}

    def rebuild(self, specs, seed, records, generation, member):
        """Rebuilds one member from the run seed and the records of generations
        `0 .. generation - 1` (`records[name]` is a `(generations, width)` array). A
        strategy that `starts_from_weights` also takes `start=`, the run's starting
        weights (`Lineage.start`).

        Returns:
            A list of numpy arrays, one per spec.
        """
        raise NotImplementedError(
            f"{self.__class__.__name__} keeps no compact genome to rebuild members from."
        )

    # -- to implement ----------------------------------------------------------------------
    def _init(self, specs, seed):
        raise NotImplementedError

    def _ask(self, state):
        raise NotImplementedError

    def _tell(self, state, losses):
        raise NotImplementedError

    def _best(self, state):
        raise NotImplementedError

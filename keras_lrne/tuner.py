"""`EvolutionHyperModel`: tune `evolve()` with keras-tuner's own tuners."""

import copy
import inspect
import math
import numbers

import keras

try:
    import keras_tuner
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "`keras_lrne.EvolutionHyperModel` needs keras-tuner (and tensorboard), which are "
        'optional. Install them with: pip install "keras-lrne[tuner]"'
    ) from error

from keras_lrne import engine
from keras_lrne._validation import is_int
from keras_lrne.strategies import GA
from keras_lrne.tasks.base import Task
from keras_lrne.tasks.environment import Environment

_HYPERBAND_EPOCHS = "tuner/epochs"
# Keyword arguments of `search()` this hypermodel consumes itself (the rest go to evolve).
_OWN_ARGUMENTS = ("generations", "epochs", "initial_epoch", "callbacks", "seed")


def _is_positive_real(value):
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _int_space(name, value, minimum):
    """A fixed integer or a non-empty list/tuple of distinct integers, all >= minimum.

    Returns an `int` (fixed) or a tuple of ints (choices).
    """
    expected = f"an integer >= {minimum} or a non-empty list of distinct such integers"
    if is_int(value):
        values = (value,)
    elif isinstance(value, (list, tuple)) and value and all(is_int(v) for v in value):
        values = tuple(value)
    else:
        raise ValueError(
            f"Received an invalid value for `{name}`, expected {expected}. "
            f"Received: {name}={value!r}"
        )
    if any(v < minimum for v in values) or len(set(values)) != len(values):
        raise ValueError(
            f"Received an invalid value for `{name}`, expected {expected}. "
            f"Received: {name}={value!r}"
        )
    values = tuple(int(v) for v in values)
    return values[0] if is_int(value) else values


def _rate_space(name, value):
    """A fixed positive rate or a `(min, max)` range with `0 < min < max`."""
    if _is_positive_real(value):
        return float(value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(_is_positive_real(v) for v in value)
        and value[0] < value[1]
    ):
        return (float(value[0]), float(value[1]))
    raise ValueError(
        f"Received an invalid value for `{name}`, expected a positive finite number or a "
        f"`(min, max)` range with 0 < min < max (sampled log-uniformly). "
        f"Received: {name}={value!r}"
    )


def _smallest(space):
    return space if is_int(space) else min(space)


def _largest(space):
    return space if is_int(space) else max(space)


def _fatal(message):
    return keras_tuner.errors.FatalValueError(message)


def _objective_names(callbacks):
    """Names of the tuner's objective(s), read from its `SaveBestEpoch` callback."""
    for callback in callbacks:
        objective = getattr(callback, "objective", None)
        if objective is not None and hasattr(objective, "direction"):
            objectives = getattr(objective, "objectives", None) or [objective]
            return [getattr(o, "name", None) for o in objectives]
    return []


class EvolutionHyperModel(keras_tuner.HyperModel):
    """A keras-tuner `HyperModel` that trains its models with `evolve()`.

    Tunes the rank of a keras-lrne model and the genetic algorithm's mutation rate,
    population size and number of parents with keras-tuner's own tuners
    (`keras_tuner.RandomSearch`, `keras_tuner.BayesianOptimization`,
    `keras_tuner.Hyperband`). `build(hp)` declares the hyperparameters `"rank"`,
    `"mutation_rate"`, `"population_size"` and `"num_parents"` and calls `build_model`;
    `fit(hp, model, ...)` builds a `keras_lrne.strategies.GA` from them and returns the
    `keras.callbacks.History` of `keras_lrne.evolve(model, ...)`, whose generations are the epochs
    keras-tuner's callbacks see. Everything given to `tuner.search(...)` reaches
    `evolve()` (`x`, `y`, `validation_data`, `generations`, `callbacks`, `verbose`,
    `seed`, `population_batch_size`, `batch_size`).

    Objectives (every key of the History can be one):

    - `keras_tuner.Objective("val_loss", "min")` for language modelling and supervised
      data: the elite's loss on the validation data (a `LanguageModeling` task holds
      out its own; for arrays pass `validation_data` to `search()`).
    - `keras_tuner.Objective("episode_return", "max")` for environment tasks
      (`keras_lrne.tasks.Environment`, `Control`, `Atari`, `CarRacing`): the elite's
      mean episode return per generation. `"mean_return"` and `"max_return"` are
      logged too.
    - `"loss"` (min) works for every task: the elite's training loss (`-return` for
      environments).

    An objective the task does not log (`episode_return` for a language model,
    `val_loss` without validation data or for an environment) stops the search with an
    error before the first trial evolves.

    `Hyperband`: generations play the role of epochs (`max_epochs` is the largest
    number of generations of one trial). Hyperband continues a promising trial by
    asking for more epochs; since the population of a run is not stored in the model's
    weights, the continued trial replays its run from generation 0 with the same seed,
    which reproduces the earlier generations exactly (one backend, one machine) and
    then evolves on, for `epochs` generations in all. Every trial uses the run seed
    `seed` (0 by default, unlike `evolve()`) plus its execution index (with
    `executions_per_trial > 1`), so trials differ only by their hyperparameters.

    Each search-space argument takes a fixed value (declared as `hp.Fixed`, recorded
    with the trial) or the values to search. Invalid spaces raise a `ValueError` here,
    before a tuner exists, so no saved project is touched.

    Args:
        build_model: Callable building one compiled Keras model (any `keras.Model`:
            `keras_lrne.Model`, a plain `keras.Sequential`, a functional model, ...;
            evolved with `keras_lrne.evolve`): `build_model(hp, rank)`, or
            `build_model(hp)` when `rank=None`. It may declare its own
            hyperparameters on `hp`.
        rank: The ranks to try, a list of distinct positive integers, a fixed
            positive integer, or `None` to not tune a rank. Defaults to
            `(1, 2, 4, 8)`.
        mutation_rate: The GA's `mutation_rate`: a `(min, max)` range, sampled
            log-uniformly, or a fixed positive number. Defaults to `(1e-3, 1e-1)`.
        population_size: The population sizes to try (distinct integers >= 2) or a
            fixed one. Defaults to `(16, 32, 64)`.
        num_parents: The numbers of parents (truncation size) to try (distinct
            positive integers) or a fixed one. Every choice must be below the
            smallest `population_size`, so that every combination is a valid GA.
            Defaults to `(2, 4, 8)`.
        name: Optional name of the hypermodel.
        tunable: Whether the hyperparameters declared here join the search space
            (keras-tuner's `HyperModel` argument). Defaults to `True`.

    Returns:
        A `keras_tuner.HyperModel` to give to a keras-tuner tuner as `hypermodel`.

    Example:

    >>> import keras, keras_tuner, keras_lrne
    >>> task = keras_lrne.tasks.LanguageModeling(sequence_length=32, num_sequences=64)
    >>> def build_model(hp, rank):
    ...     model = keras_lrne.presets.language_model(
    ...         "factorized", vocab_size=task.vocab_size, sequence_length=32, rank=rank)
    ...     model.compile(
    ...         loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ...     return model
    >>> hypermodel = keras_lrne.EvolutionHyperModel(build_model, rank=[1, 4],
    ...                                             population_size=[16, 32])
    >>> tuner = keras_tuner.RandomSearch(
    ...     hypermodel, objective=keras_tuner.Objective("val_loss", "min"),
    ...     max_trials=4, directory="tuning", project_name="lm")
    >>> tuner.search(task, generations=10, seed=0)
    >>> best_hp = tuner.get_best_hyperparameters()[0]
    >>> best_model = tuner.get_best_models()[0]
    """

    def __init__(self, build_model, rank=(1, 2, 4, 8), mutation_rate=(1e-3, 1e-1),
                 population_size=(16, 32, 64), num_parents=(2, 4, 8), name=None,
                 tunable=True):
        if not callable(build_model):
            raise ValueError(
                "Received an invalid value for `build_model`, expected a callable "
                "`build_model(hp, rank)` (or `build_model(hp)` with `rank=None`) returning a "
                f"compiled keras-lrne model. Received: build_model={build_model!r}"
            )
        self.build_model = build_model
        self.rank = None if rank is None else _int_space("rank", rank, 1)
        self.mutation_rate = _rate_space("mutation_rate", mutation_rate)
        self.population_size = _int_space("population_size", population_size, 2)
        self.num_parents = _int_space("num_parents", num_parents, 1)
        if _largest(self.num_parents) >= _smallest(self.population_size):
            raise ValueError(
                "Received an invalid value for `num_parents`, expected every choice to be "
                "below the smallest `population_size` "
                f"({_smallest(self.population_size)}) so that every combination leaves "
                f"room for children. Received: num_parents={num_parents!r}, "
                f"population_size={population_size!r}"
            )
        super().__init__(name=name, tunable=tunable)
        self._executions = {}

    # -- search space -----------------------------------------------------------------
    def declare_hyperparameters(self, hp):
        """Declares `rank`, `mutation_rate`, `population_size` and `num_parents` on `hp`."""
        self._hyperparameters(hp)

    def _declare_int(self, hp, name, space):
        if is_int(space):
            return hp.Fixed(name, space)
        return hp.Choice(name, list(space))

    def _hyperparameters(self, hp):
        """Declares (or reads) this trial's values and checks them; returns a dict."""
        if not self.tunable:
            hp = hp.copy()  # as `HyperModel.build`: add nothing to the search space
        values = {}
        if self.rank is not None:
            values["rank"] = self._declare_int(hp, "rank", self.rank)
        if isinstance(self.mutation_rate, tuple):
            low, high = self.mutation_rate
            values["mutation_rate"] = hp.Float("mutation_rate", low, high, sampling="log")
        else:
            values["mutation_rate"] = hp.Fixed("mutation_rate", self.mutation_rate)
        values["population_size"] = self._declare_int(hp, "population_size",
                                                      self.population_size)
        values["num_parents"] = self._declare_int(hp, "num_parents", self.num_parents)
        # Values set from outside (a tuner's `hyperparameters=`) skip the checks above.
        for name, minimum in (("rank", 1), ("population_size", 2), ("num_parents", 1)):
            if name in values and (not is_int(values[name]) or values[name] < minimum):
                raise _fatal(
                    f"Received an invalid value for the hyperparameter `{name}`, expected "
                    f"an integer >= {minimum}. Received: {name}={values[name]!r}"
                )
        if not _is_positive_real(values["mutation_rate"]):
            raise _fatal(
                "Received an invalid value for the hyperparameter `mutation_rate`, "
                "expected a positive finite number. "
                f"Received: mutation_rate={values['mutation_rate']!r}"
            )
        if values["num_parents"] >= values["population_size"]:
            raise _fatal(
                "Received an invalid value for the hyperparameter `num_parents`, expected "
                f"an integer below population_size={values['population_size']}. "
                f"Received: num_parents={values['num_parents']!r}"
            )
        return values

    # -- keras_tuner.HyperModel -------------------------------------------------------
    def build(self, hp):
        """Builds the model of one trial: `build_model(hp, rank)` (or `build_model(hp)`).

        Args:
            hp: A `keras_tuner.HyperParameters` instance.

        Returns:
            The Keras model returned by `build_model`.
        """
        values = self._hyperparameters(hp)
        args = (hp,) if self.rank is None else (hp, values["rank"])
        model = self.build_model(*args)
        if not isinstance(model, keras.Model):
            raise keras_tuner.errors.FatalTypeError(
                "Received an invalid value from `build_model`, expected a Keras model "
                "(`keras.Model`, e.g. `keras_lrne.Sequential` or a plain "
                f"`keras.Sequential`). Received: {model!r:.200} of type "
                f"{type(model).__name__}"
            )
        return model

    def build_strategy(self, hp):
        """Builds the evolution strategy of one trial from its hyperparameter values.

        Override it to tune other strategy settings or another strategy (e.g.
        `keras_lrne.strategies.OpenES` and its `sigma`).

        Args:
            hp: A `keras_tuner.HyperParameters` instance.

        Returns:
            A `keras_lrne.strategies.GA(population_size, num_parents, mutation_rate)`.
        """
        values = self._hyperparameters(hp)
        return GA(population_size=values["population_size"],
                  num_parents=values["num_parents"],
                  mutation_rate=values["mutation_rate"])

    def fit(self, hp, model, x=None, y=None, *, generations=None, epochs=None,
            initial_epoch=0, callbacks=None, seed=None, **kwargs):
        """Evolves the model of one trial and returns the History of `evolve()`.

        Called by the tuner with the arguments of `tuner.search(...)`.

        Args:
            hp: A `keras_tuner.HyperParameters` instance.
            model: The model returned by `build(hp)`.
            x: Training data or a `keras_lrne.tasks` task, as for `evolve()`.
            y: Targets for array data; None otherwise.
            generations: Number of generations (an integer >= 1). Defaults to
                `epochs`, else 1.
            epochs: keras-tuner's name for `generations`; `Hyperband` sets it (and then
                it wins over `generations`). Giving both with different values
                otherwise is an error.
            initial_epoch: Set by `Hyperband` when it continues a trial: the
                generations already run. The run is replayed from generation 0 with the
                same seed, so `epochs` generations run in all.
            callbacks: Keras callbacks (the tuner appends its own), called once per
                generation. A `BackupAndRestore` is rejected: all trials would share
                it; keras-tuner itself resumes an interrupted search
                (`overwrite=False`).
            seed: Run seed of every trial, a non-negative integer; defaults to 0.
                Execution `i` of a trial (`executions_per_trial`) uses `seed + i`.
            **kwargs: Other arguments of `evolve()`: `validation_data`, `verbose`,
                `population_batch_size`, `batch_size`.

        Returns:
            The `keras.callbacks.History` of `keras_lrne.evolve(model, ...)`.
        """
        callbacks = list(callbacks or [])
        accepted = set(inspect.signature(engine.evolve).parameters) - {"model"}
        unknown = sorted(k for k in kwargs if k not in accepted)
        if "strategy" in kwargs:
            raise _fatal(
                "`strategy` is built from each trial's hyperparameters by "
                "`EvolutionHyperModel.build_strategy(hp)`; do not pass it to `search()`. "
                f"Received: strategy={kwargs['strategy']!r}"
            )
        if unknown:
            raise keras_tuner.errors.FatalTypeError(
                "Received unknown keyword arguments for `evolve()` in `search()`: "
                f"{unknown}. Accepted: {sorted(set(accepted) - {'strategy'})}"
            )
        generations = self._generations(hp, generations, epochs)
        if not is_int(initial_epoch) or not 0 <= initial_epoch < generations:
            raise _fatal(
                "Received an invalid value for `initial_epoch`, expected an integer in "
                f"[0, {generations}). Received: initial_epoch={initial_epoch!r}"
            )
        if seed is None:
            seed = 0
        if not is_int(seed) or seed < 0:
            raise _fatal(
                "Received an invalid value for `seed`, expected a non-negative integer or "
                f"None. Received: seed={seed!r}"
            )
        if any(isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks):
            raise _fatal(
                "`BackupAndRestore` cannot be shared by the trials of a search: a trial "
                "could resume another trial's population. keras-tuner saves every "
                "finished trial; rerun the search with `overwrite=False` to resume it. "
                "Received: callbacks with a BackupAndRestore"
            )
        self._check_objectives(callbacks, x, kwargs.get("validation_data"))

        # Executions of one trial (same values, Hyperband keys included) get seed + i;
        # a Hyperband continuation has new keys, so it replays execution 0's run.
        key = repr(sorted(hp.values.items()))
        execution = self._executions.get(key, 0)
        self._executions[key] = execution + 1

        strategy = self.build_strategy(hp)
        state = None
        if isinstance(x, Task) and callable(getattr(x, "get_state", None)):
            # Every trial starts from the task's state at `search()` (e.g. running
            # observation statistics), so trials are comparable and replays exact.
            state = copy.deepcopy(x.get_state())
        try:
            return engine.evolve(model, x, y, strategy=strategy, generations=generations,
                                 callbacks=callbacks, seed=seed + execution, **kwargs)
        except keras_tuner.errors.FatalError:
            raise
        except ValueError as error:
            # Bad data or settings fail every trial alike: stop the search now.
            raise _fatal(str(error)) from error
        finally:
            if state is not None:
                x.set_state(state)

    # -- helpers ----------------------------------------------------------------------
    def _generations(self, hp, generations, epochs):
        if _HYPERBAND_EPOCHS in hp.values and epochs is not None:
            generations = epochs  # Hyperband's budget for this trial wins, as for `fit()`.
        elif generations is None:
            generations = 1 if epochs is None else epochs
        elif epochs is not None and epochs != generations:
            raise _fatal(
                "`epochs` and `generations` mean the same here (one generation is one "
                "epoch); give one of them. "
                f"Received: generations={generations!r}, epochs={epochs!r}"
            )
        if not is_int(generations) or generations < 1:
            raise _fatal(
                "Received an invalid value for `generations`, expected an integer >= 1. "
                f"Received: generations={generations!r}"
            )
        return int(generations)

    def _check_objectives(self, callbacks, x, validation_data):
        is_environment = isinstance(x, Environment)
        for name in _objective_names(callbacks):
            if name == "episode_return" and not is_environment:
                raise _fatal(
                    "The objective `episode_return` is logged only for environment tasks "
                    "(`keras_lrne.tasks.Environment`, `Control`, `Atari`, `CarRacing`); "
                    "use `keras_tuner.Objective('val_loss', 'min')` (or 'loss') for "
                    f"supervised data. Received: x of type {type(x).__name__}"
                )
            if isinstance(name, str) and name.startswith("val_"):
                if is_environment:
                    raise _fatal(
                        f"The objective `{name}` is not logged for environment tasks, which "
                        "have no validation data; use "
                        "`keras_tuner.Objective('episode_return', 'max')`. "
                        f"Received: x={x!r}"
                    )
                has_validation = validation_data is not None or (
                    isinstance(x, Task) and x.validation_data() is not None
                )
                if not has_validation:
                    raise _fatal(
                        f"The objective `{name}` needs validation data: pass "
                        "`validation_data=(x_val, y_val)` to `search()` or use a task with "
                        "validation data (e.g. `LanguageModeling`). "
                        "Received: validation_data=None"
                    )

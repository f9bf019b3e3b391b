"""Evaluators: what a population is scored on, generation by generation.

The engine (`keras_lrne.engine`) picks one evaluator per run from the task and the
distribution, builds it from explicit arguments (the compiled population functions, the
progress groups, the member count) and, every generation, calls
`evaluate(population, generation, progress)` -> `(losses, logs)` on what the strategy
asked, then `validate(weights)` on the weights the model holds after `strategy.tell`.
Lower losses are better; NaN or inf losses rank last. An evaluator whose losses stand
for an objective to maximise (a fitness, an episode return) declares it as its
`objective`; the engine then logs that objective of the held weights once, from `loss`
and `val_loss` (`objective_logs`).

- `SupervisedEvaluator`: the compiled loss on `(x, y)` data (arrays, language
  modelling), or a compiled `keras_lrne.tasks.Fitness` on data.
- `PythonFitnessEvaluator`: a Python `Fitness` (`per_member=True`), one call per member.
- `EnvironmentEvaluator`: episodes played by the rollout engine (`keras_lrne.rollout`),
  with the optional two-stage re-evaluation.

`Evaluator` is the base class of all of them, and of evaluators of your own.
"""

import math
import time
from typing import NamedTuple

import keras
import numpy as np

from keras_lrne import backend as lrne_backend
from keras_lrne import genome
from keras_lrne import population as pop
from keras_lrne._validation import warn_at_caller
from keras_lrne.tasks.base import objective_value
from keras_lrne.tasks.fitness import member_value

#: At most this many progress-bar steps per generation for supervised tasks: the
#: population is evaluated in this many compiled calls (or fewer), each a whole number of
#: population chunks.
MAX_PROGRESS_STEPS = 16


class Progress:
    """Progress within a generation, reported to callbacks like `fit()`'s batches.

    Each step fires `on_train_batch_begin(step)` and `on_train_batch_end(step, logs)`,
    so the progress bar moves during a generation (population chunks for supervised
    tasks, member-episodes for environment tasks) and batch-level callbacks run.

    Args:
        callbacks: a `keras.callbacks.CallbackList`.
        steps: steps per generation (the progress bar's target).
    """

    def __init__(self, callbacks, steps):
        self.callbacks = callbacks
        self.steps = int(steps)
        self.done = 0
        self._open = False

    def begin(self):
        """Starts the next step."""
        if not self._open and self.done < self.steps:
            self.callbacks.on_train_batch_begin(self.done)
            self._open = True

    def end(self, logs=None):
        """Ends the current step with its logs (e.g. the best loss so far)."""
        if self.done >= self.steps:
            return
        self.begin()
        self.callbacks.on_train_batch_end(self.done, dict(logs or {}))
        self._open = False
        self.done += 1

    def advance_to(self, done, logs=None):
        """Completes every step up to `done` (several may complete at once)."""
        while self.done < min(int(done), self.steps):
            self.end(logs)


def tokens_per_sample(task):
    """Tokens per sample of a token task (for `member_tokens_per_second`), or None."""
    return getattr(task, "tokens_per_sample", None) or getattr(task, "sequence_length", None)


class Objective(NamedTuple):
    """What an evaluator's losses stand for, when it is not the loss itself.

    Attributes:
        name: the log key of the objective of the weights the model holds (`fitness`,
            `episode_return`); `val_<name>` is logged from `val_loss`.
        maximize: whether higher values of the objective are better (the loss is then
            minus the objective, else the objective itself).
    """

    name: str
    maximize: bool


def objective_logs(objective, logs):
    """The logs the engine derives from an evaluator's `objective` (an `Objective` or
    None), once per generation after `tell` and `validate`: `objective.name` from
    `logs["loss"]` (the loss of the weights the model holds) and `val_<name>` from
    `logs["val_loss"]` when it is there.

    Returns:
        A dict of floats (empty when `objective` is None).
    """
    if objective is None:
        return {}
    name, maximize = objective
    derived = {name: objective_value(float(logs["loss"]), maximize)}
    if "val_loss" in logs:
        derived[f"val_{name}"] = objective_value(float(logs["val_loss"]), maximize)
    return derived


def finite_stats(values):
    """Mean, median and max of the finite entries of `values` (NaN if there are none)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return float("nan"), float("nan"), float("nan")
    return float(np.mean(finite)), float(np.median(finite)), float(np.max(finite))


def _best_finite(values, best=math.inf):
    finite = values[np.isfinite(values)]
    return min(best, float(finite.min())) if finite.size else best


def plan_groups(num_members, chunk_size, max_steps=None):
    """Splits a population into at most `max_steps` groups of whole chunks.

    Returns:
        `(group_size, groups)` (`max_steps` defaults to `MAX_PROGRESS_STEPS`):
        `groups` is a list of `(start, skip)`, one compiled call
        each on members `start .. start + group_size - 1`, of which the first `skip`
        were already evaluated by the previous group (the last group is shifted back so
        that every group has the same size: one compiled shape).
    """
    max_steps = MAX_PROGRESS_STEPS if max_steps is None else max_steps
    chunks = -(-num_members // chunk_size)
    per_group = -(-chunks // max_steps)
    size = per_group * chunk_size
    if size >= num_members:
        return num_members, [(0, 0)]
    groups = []
    for start in range(0, num_members, size):
        shifted = min(start, num_members - size)
        groups.append((shifted, start - shifted))
    return size, groups


class Evaluator:
    """Base class of evaluators: scores a population, one generation at a time.

    An evaluator turns the population the strategy asked for into one loss per member
    (lower is better; NaN and inf rank last) and the generation's logs. The engine calls,
    every generation: `evaluate`, then (after `strategy.tell`) `validate` on the weights
    the model then holds; `close` once at the end of the run. When the losses stand for
    an objective (`objective`, e.g. `Objective("fitness", maximize=True)`), the engine
    logs that objective of the held weights (and `val_<name>`) itself, from `loss` and
    `val_loss`.

    Args:
        num_members: members per generation.
        steps: progress steps per generation (the progress bar's target; batch-level
            callbacks run once per step).

    Example:

    >>> class Zero(keras_lrne.evaluators.Evaluator):
    ...     def evaluate(self, population, generation, progress=None):
    ...         losses = np.zeros(self.num_members)
    ...         return losses, {"loss": 0.0}
    """

    #: What the losses stand for: None (the loss itself) or an `Objective`.
    objective = None

    def __init__(self, num_members, steps=1):
        self.num_members = int(num_members)
        self.steps = int(steps)

    def evaluate(self, population, generation, progress=None):
        """Scores `population` (one tensor per evolvable variable, members first).

        Args:
            population: list of tensors of shape `(num_members, *variable.shape)`.
            generation: the generation's index.
            progress: a `Progress` to report steps to, or None.

        Returns:
            `(losses, logs)`: a numpy array of `num_members` losses and a dict of logs
            (at least `loss`, the best finite loss).
        """
        raise NotImplementedError

    def validate(self, weights):
        """Logs of `weights` (one tensor per evolvable variable) on held-out data, e.g.
        `{"val_loss": ...}`; `{}` by default.

        Returns:
            A dict of logs.
        """
        return {}

    def close(self):
        """Releases what the evaluator holds (environments, workers)."""


def compiled_metrics(model):
    """The `metrics` (else `weighted_metrics`) given to `model.compile()`, or None."""
    config = getattr(getattr(model, "_compile_config", None), "config", None) or {}
    if not getattr(model, "compiled", False):
        return None
    return config.get("metrics") or config.get("weighted_metrics") or None


def metric_logs(model, x, y, batch_size, prefix=""):
    """The compiled metrics of the weights `model` holds on `(x, y)`, named as `fit()`
    names them (`accuracy`; with `prefix="val_"`, `val_accuracy`).

    Computed by `model.evaluate()`: Keras' own metric objects in its compiled test step,
    one call for the held weights (never per member). The loss is left out: `evolve()`
    logs its own.

    Args:
        model: a model compiled with `metrics` (or `weighted_metrics`).
        x: inputs; y: targets (an array, or a dict/list of them).
        batch_size: samples per step (a divisor of the sample count: one compiled shape).
        prefix: put before every name ("val_" for validation data).

    Returns:
        A dict of floats.
    """
    results = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    return {f"{prefix}{name}": float(value) for name, value in results.items()
            if name != "loss"}


def fitness_logs(losses, maximize):
    """`mean_fitness` and `median_fitness` of the finite member losses of a fitness task."""
    mean, median, _ = finite_stats(np.asarray(losses, dtype="float64"))
    return {"mean_fitness": objective_value(mean, maximize),
            "median_fitness": objective_value(median, maximize)}


class SupervisedEvaluator(Evaluator):
    """Scores a population on `(x, y)` data with compiled, vectorised calls.

    The objective is the one `functions` was compiled with: the model's compiled loss,
    or minus a compiled `keras_lrne.tasks.Fitness` (pass `maximize`, which then logs
    `fitness`, `mean_fitness` and `median_fitness` besides `loss`). When the model was
    compiled with `metrics` (`model.compile(..., metrics=["accuracy"])`), `validate`
    also logs them as `fit()` does, for the weights the model holds: on the data of the
    generation (`accuracy`) and on the validation data (`val_accuracy`).

    Args:
        functions: the run's `keras_lrne.population.PopulationFunctions`.
        groups: `(start, skip)` pairs (`plan_groups`): one compiled call and one progress
            step each.
        num_members: members per generation.
        batch_size: samples per member per compiled batch (divides the sample count).
        data: `generation -> (x, y)`; `x` and `y` are arrays or dicts/lists of arrays
            (`y` None for a fitness without targets).
        validation: `(x_val, y_val)` or None; logged as `val_loss` (and the compiled
            metrics as `val_<name>`).
        validation_batch_size: samples per batch of the validation call.
        tokens_per_sample: tokens per sample, for `member_tokens_per_second`, or None.
        maximize: None for a loss; True or False for a fitness (see above).
    """

    def __init__(self, functions, groups, num_members, batch_size, data, validation=None,
                 validation_batch_size=None, tokens_per_sample=None, maximize=None):
        super().__init__(num_members, len(groups))
        self.functions = functions
        self.groups = groups
        self.batch_size = int(batch_size)
        self.data = data
        self.tokens_per_sample = tokens_per_sample
        self.maximize = maximize
        if maximize is not None:
            self.objective = Objective("fitness", bool(maximize))
        self.val = None
        self.validation = validation
        self.validation_batch_size = None
        if validation is not None:
            x_val, y_val = validation
            size = self.validation_batch_size = (validation_batch_size
                                                 or pop.num_samples(x_val))
            self.val = (pop.to_tensors(pop.batch_data(x_val, size)),
                        pop.to_tensors(pop.batch_data(y_val, size)))
        self._cached = (None, None, None)
        self._generation_data = None  # the (x, y) of the last evaluated generation

    def evaluate(self, population, generation, progress=None):
        """Returns `(losses, logs)`: one mean loss per member, and the generation's logs."""
        x, y = self.data(generation)
        self._generation_data = (x, y)
        # The strategy may still run asynchronously.
        lrne_backend.get().block(population.shared
                                 if isinstance(population, genome.PopulationRecipe)
                                 else population)
        start = time.perf_counter()
        losses = self._losses(population, generation, x, y, progress)
        seconds = max(time.perf_counter() - start, 1e-9)
        mean, median, _ = finite_stats(losses)
        logs = {"loss": _best_finite(losses)}
        if self.maximize is None:
            logs.update(mean_loss=mean, median_loss=median)
        else:
            logs.update(fitness_logs(losses, self.maximize))
        logs["member_evals_per_second"] = len(losses) / seconds
        if self.tokens_per_sample:
            logs["member_tokens_per_second"] = (
                len(losses) * pop.num_samples(x) * self.tokens_per_sample / seconds
            )
        return losses, logs

    def _losses(self, population, generation, x, y, progress):
        """One loss per member on `(x, y)`, group by group (one progress step each)."""
        if self._cached[0] is not x:
            self._cached = (x, pop.to_tensors(pop.batch_data(x, self.batch_size)),
                            pop.to_tensors(pop.batch_data(y, self.batch_size)))
        functions = self.functions
        bk = lrne_backend.get()
        data = (functions.frozen_values(), functions.non_trainable_values(),
                self._cached[1], self._cached[2])
        parts, best = [], math.inf
        for group_start, skip in self.groups:
            if progress is not None:
                progress.begin()
            part = bk.to_numpy(functions.evaluate_group(
                population, np.asarray(group_start, np.int32), *data))
            # One row per device: its members `group_start + skip ..` of its share.
            part = part.reshape(functions.num_devices, -1)[:, skip:]
            parts.append(part)
            best = _best_finite(part.ravel(), best)
            if progress is not None:
                progress.end({"loss": best} if math.isfinite(best) else {})
        return np.concatenate(parts, axis=1).reshape(-1)[: self.num_members]

    def validate(self, weights):
        """The logs of `weights` (one tensor per evolvable variable, which the model
        holds): `val_loss` on the validation data (and `val_fitness` for a fitness
        task), and the model's compiled metrics on the generation's data and on the
        validation data (`accuracy`, `val_accuracy`); `{}` without either."""
        logs = self._metric_logs()
        if self.val is None:
            return logs
        functions = self.functions
        member = [keras.ops.expand_dims(v, 0) for v in weights]
        loss = functions.evaluate(member, functions.frozen_values(),
                                  functions.non_trainable_values(), self.val[0], self.val[1])
        loss = float(lrne_backend.get().to_numpy(loss)[0])
        logs["val_loss"] = loss
        if self.validation[1] is not None and compiled_metrics(self.functions.model):
            logs.update(metric_logs(self.functions.model, *self.validation,
                                    self.validation_batch_size, prefix="val_"))
        return logs

    def _metric_logs(self):
        """The compiled metrics of the held weights on the last generation's data."""
        model = self.functions.model
        if self._generation_data is None or not compiled_metrics(model):
            return {}
        x, y = self._generation_data
        if y is None:  # a fitness on inputs alone: nothing to compare with
            return {}
        samples = pop.num_samples(x)
        # One member: as many samples per step as a group of members takes.
        size = pop.largest_divisor_at_most(
            samples, self.batch_size * self.functions.chunk_size)
        return metric_logs(model, x, y, size)


class PythonFitnessEvaluator(Evaluator):
    """Scores a population with a Python fitness function, one call per member.

    For every member, the model's evolvable variables are loaded with the member's
    weights and `fn(model)` is called; it returns a real number. A member fails when the
    call raises or returns NaN, inf or no real number (a string, a bool, None, ...): it
    gets the worst fitness, is counted in `failed_members` and named in one warning per
    generation (pointing at the `evolve()` call). When every member of a generation
    fails, the run stops with an error that carries the first failure.

    Args:
        model: the model (its variables are overwritten member by member).
        evolvable: the `VariableSpec`s of the evolved variables (`Run.evolvable`).
        fn: `model -> float`.
        num_members: members per generation.
        maximize: whether higher fitness is better.
    """

    def __init__(self, model, evolvable, fn, num_members, maximize=True):
        super().__init__(num_members, num_members)
        self.model, self.evolvable, self.fn = model, evolvable, fn
        self.maximize = bool(maximize)
        self.objective = Objective("fitness", self.maximize)

    def evaluate(self, population, generation, progress=None):
        start = time.perf_counter()
        fitness, errors = self._fitness(population, generation, progress)
        seconds = max(time.perf_counter() - start, 1e-9)
        return self._finish(fitness, errors, generation, seconds)

    def _fitness(self, population, generation, progress):
        """`(fitness, errors)`: one float per member (NaN when it failed), and
        `[(member, exception)]`."""
        arrays = [lrne_backend.get().to_numpy(v) for v in genome.materialize(population)]
        best = [math.inf]  # the best loss so far

        def reported(member, value):
            if progress is None:
                return
            if math.isfinite(value):
                best[0] = min(best[0], objective_value(value, self.maximize))
            progress.end({"fitness": objective_value(best[0], self.maximize)}
                         if math.isfinite(best[0]) else {})

        return member_fitness(self.model, self.evolvable, self.fn, arrays,
                              range(self.num_members), on_member=reported)

    def _finish(self, fitness, errors, generation, seconds):
        fitness = np.asarray(fitness, dtype="float64")
        if errors and len(errors) == len(fitness):
            member, error = errors[0]
            raise RuntimeError(
                f"Every member's fitness failed in generation {generation} (the function "
                "raised, or returned NaN, inf or no real number); the first, of member "
                f"{member}: {type(error).__name__}: {error}"
            ) from error
        if errors:
            member, error = errors[0]
            warn_at_caller(
                f"Generation {generation}: the fitness function failed for "
                f"{len(errors)} of {len(fitness)} members (they raised, or returned NaN, "
                f"inf or no real number; they rank last); the first, of member {member}: "
                f"{type(error).__name__}: {error}",
                RuntimeWarning,
            )
        losses = np.array(objective_value(fitness, self.maximize))
        losses[~np.isfinite(losses)] = np.inf
        logs = {"loss": _best_finite(losses), **fitness_logs(losses, self.maximize),
                "failed_members": len(errors),
                "member_evals_per_second": len(losses) / seconds}
        return losses, logs


def member_fitness(model, evolvable, fn, arrays, members, on_member=None):
    """Calls `fn(model)` for each of `members` with the model holding that member.

    Args:
        model: the model; its evolvable variables are overwritten.
        evolvable: the evolved `VariableSpec`s.
        fn: `model -> float`.
        arrays: numpy population arrays, one per evolvable variable (members first).
        members: row indices into `arrays`.
        on_member: `(member, fitness)` called after each member, or None.

    Returns:
        `(fitness, errors)`: floats (NaN for a member that failed: its call raised, or
        returned NaN, inf or no real number, see `keras_lrne.tasks.fitness.member_value`),
        and `[(member, exception)]` for the failed members.
    """
    variables = model.trainable_variables
    fitness, errors = [], []
    for row, member in enumerate(members):
        for spec, values in zip(evolvable, arrays):
            variables[spec.index].assign(values[row])
        try:
            value, error = member_value(fn(model), fn)
        except Exception as raised:  # the member fails; the run goes on
            value, error = math.nan, raised
        if error is not None:
            errors.append((int(member), error))
        fitness.append(value)
        if on_member is not None:
            on_member(int(member), value)
    return fitness, errors


def check_two_stage(task, strategy):
    """Refuses two-stage selection (the task's `reevaluate_top`) with a strategy that
    does not declare `selects_by_truncation` (it gives every member outside the
    re-evaluated top the worst loss, which would corrupt the update of any other), or a
    top smaller than its `num_parents`. The engine calls it before any work."""
    top = getattr(task, "reevaluate_top", None)
    if top is None:
        return
    if not strategy.selects_by_truncation:
        raise ValueError(
            "Two-stage selection (`reevaluate_top`) needs a strategy that selects "
            "parents by truncation (`selects_by_truncation`), such as `GA`: it gives "
            "every member outside the re-evaluated top the worst loss, which would "
            f"corrupt the update of {type(strategy).__name__}. Received: "
            f"reevaluate_top={top} with strategy={strategy!r}"
        )
    parents = strategy.num_parents
    if top < parents:
        raise ValueError(
            "Received an invalid value for `reevaluate_top`, expected at least the "
            f"strategy's num_parents={parents} (only re-evaluated members can become "
            f"parents). Received: reevaluate_top={top}"
        )


class EnvironmentEvaluator(Evaluator):
    """Scores a population by playing episodes (loss = -mean episode return).

    With the task's `reevaluate_top` / `reevaluate_episodes` (two-stage selection, the
    paper's CarRacing setting, for strategies that declare `selects_by_truncation`,
    such as `GA`: the engine checks it, `check_two_stage`): after every member played the
    task's
    episodes, the best `reevaluate_top` play `reevaluate_episodes` more; their losses
    become the episode-weighted mean of both stages, and every other member's loss is
    +inf, so only they can be selected.

    Args:
        task: a `keras_lrne.tasks.Environment`.
        strategy: the run's strategy (its `num_members`).
        rollout: what plays the episodes: a `keras_lrne.rollout.RolloutEvaluator` on this
            process's environments, or one on Ray workers.
    """

    objective = Objective("episode_return", maximize=True)

    def __init__(self, task, strategy, rollout):
        self.task = task
        members = strategy.num_members
        self.top = getattr(task, "reevaluate_top", None)
        self.second_episodes = getattr(task, "reevaluate_episodes", None)
        if self.top is not None and self.top > members:
            raise ValueError(
                "Received an invalid value for `reevaluate_top`, expected at most the "
                f"strategy's {members} members. Received: reevaluate_top={self.top}"
            )
        self.rollout = rollout
        self.first_steps = members * task.episodes
        super().__init__(members, self.first_steps
                         + (self.top or 0) * (self.second_episodes or 0))

    def evaluate(self, population, generation, progress=None):
        """Returns `(losses, logs)`: minus the mean return per member, and the logs."""
        start = time.perf_counter()
        losses, returns, extra = self.rollout.evaluate(population, generation,
                                                       progress=progress)
        seconds = max(time.perf_counter() - start, 1e-9)
        mean, median, best = finite_stats(np.where(np.isfinite(losses), returns, np.nan))
        logs = {
            "loss": _best_finite(losses),
            "mean_return": mean,
            "median_return": median,
            "max_return": best,
            "member_evals_per_second": len(losses) / seconds,
            "first_stage_seconds": seconds,
            **extra,
        }
        if self.top:
            losses = self._second_stage(population, generation, losses, logs, progress)
        return losses, logs

    def _second_stage(self, population, generation, losses, logs, progress):
        order = np.argsort(np.where(np.isfinite(losses), losses, np.inf), kind="stable")
        order = order[: self.top]
        second, _, extra = self.rollout.evaluate(
            population, generation, members=order, episodes=self.second_episodes, stage=1,
            progress=progress, progress_offset=self.first_steps,
        )
        k1, k2 = self.task.episodes, self.second_episodes
        selection = np.full_like(losses, np.inf)
        selection[order] = (losses[order] * k1 + second * k2) / (k1 + k2)
        logs["loss"] = _best_finite(selection)
        logs["env_steps"] = logs.get("env_steps", 0) + extra.get("env_steps", 0)
        return selection

    def validate(self, weights):
        return {}

    def close(self):
        self.rollout.close()

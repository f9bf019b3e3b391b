"""Evaluators: what a task's population is scored on, generation by generation.

`model.evolve()` asks its task for an evaluator (`task.evaluator(run)`) and, every
generation, calls `evaluate(population, generation, progress)` -> `(losses, logs)` on
what the strategy asked, then `validate(weights)` on the weights the model holds.
Supervised tasks (arrays, language modelling) use `SupervisedEvaluator`; environment
tasks use `EnvironmentEvaluator`, which plays episodes with the rollout engine
(`keras_lrne.rollout`) and runs the optional two-stage re-evaluation.
"""

import math
import time

import keras
import numpy as np

from keras_lrne import backend as lrne_backend
from keras_lrne import population as pop
from keras_lrne.rollout import RolloutEvaluator

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


class SupervisedEvaluator:
    """Scores a population on a supervised task's `(x, y)` data with the compiled loss.

    Args:
        run: the run (`evolve()`'s `Run`: functions, batch size, validation data).
        task: a task with `train_data(generation)`.
    """

    def __init__(self, run, task):
        self.run, self.task = run, task
        self.functions = run.functions
        self.groups = run.groups
        self.steps = len(self.groups)
        self.tokens_per_sample = getattr(task, "tokens_per_sample", None) or getattr(
            task, "sequence_length", None
        )
        self.val = None
        if run.validation is not None:
            x_val, y_val = run.validation
            _, val_batch = pop.plan_chunks(1, len(x_val), run.bytes_per_sample,
                                           population_batch_size=1)
            self.val = (pop.batch_data(x_val, val_batch), pop.batch_data(y_val, val_batch))
        self._cached = (None, None, None)

    def evaluate(self, population, generation, progress=None):
        """Returns `(losses, logs)`: one mean loss per member, and the generation's logs."""
        x, y = self.task.train_data(generation)
        lrne_backend.get().block(population)  # the strategy may still run asynchronously
        start = time.perf_counter()
        losses = self._losses(population, generation, x, y, progress)
        seconds = max(time.perf_counter() - start, 1e-9)
        mean, median, _ = finite_stats(losses)
        logs = {
            "loss": _best_finite(losses),
            "mean_loss": mean,
            "median_loss": median,
            "member_evals_per_second": len(losses) / seconds,
        }
        if self.tokens_per_sample:
            logs["member_tokens_per_second"] = (
                len(losses) * len(x) * self.tokens_per_sample / seconds
            )
        return losses, logs

    def _losses(self, population, generation, x, y, progress):
        """One loss per member on `(x, y)`, group by group (one progress step each)."""
        if self._cached[0] is not x:
            self._cached = (x,
                            keras.ops.convert_to_tensor(pop.batch_data(x, self.run.batch_size)),
                            keras.ops.convert_to_tensor(pop.batch_data(y, self.run.batch_size)))
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
        return np.concatenate(parts, axis=1).reshape(-1)[: self.run.strategy.num_members]

    def complete(self, logs):
        """Finishes a generation's logs once the strategy has set `loss`."""

    def validate(self, weights):
        """`{"val_loss": ...}` of `weights` (one tensor per evolvable variable) on the
        validation data, or `{}` without validation data."""
        if self.val is None:
            return {}
        functions = self.functions
        member = [keras.ops.expand_dims(v, 0) for v in weights]
        loss = functions.evaluate(member, functions.frozen_values(),
                                  functions.non_trainable_values(), self.val[0], self.val[1])
        return {"val_loss": float(lrne_backend.get().to_numpy(loss)[0])}

    def close(self):
        pass


class EnvironmentEvaluator:
    """Scores a population by playing episodes (loss = -mean episode return).

    With the task's `reevaluate_top` / `reevaluate_episodes` (two-stage selection, the
    paper's CarRacing setting, for truncation-selection strategies such as `GA`): after
    every member played the task's
    episodes, the best `reevaluate_top` play `reevaluate_episodes` more; their losses
    become the episode-weighted mean of both stages, and every other member's loss is
    +inf, so only they can be selected.

    Args:
        run: the run (`evolve()`'s `Run`).
        task: a `keras_lrne.tasks.Environment`.
        rollout: what plays the episodes (default: a `keras_lrne.rollout.RolloutEvaluator`
            on this process's environments).
    """

    def __init__(self, run, task, rollout=None):
        self.task = task
        members = run.strategy.num_members
        self.top = getattr(task, "reevaluate_top", None)
        self.second_episodes = getattr(task, "reevaluate_episodes", None)
        if self.top is not None:
            if self.top > members:
                raise ValueError(
                    "Received an invalid value for `reevaluate_top`, expected at most the "
                    f"strategy's {members} members. Received: reevaluate_top={self.top}"
                )
            parents = getattr(run.strategy, "num_parents", None)
            if parents is None:
                raise ValueError(
                    "Two-stage selection (`reevaluate_top`) needs a strategy that selects "
                    "parents by truncation, such as `GA`: it gives every member outside the "
                    "re-evaluated top the worst loss, which would corrupt the update of "
                    f"{type(run.strategy).__name__}. Received: reevaluate_top={self.top} "
                    f"with strategy={run.strategy!r}"
                )
            if self.top < parents:
                raise ValueError(
                    "Received an invalid value for `reevaluate_top`, expected at least the "
                    f"strategy's num_parents={parents} (only re-evaluated members can "
                    f"become parents). Received: reevaluate_top={self.top}"
                )
        self.rollout = rollout or RolloutEvaluator(run.model, run.functions, task, members,
                                                   run.seed)
        self.first_steps = members * task.episodes
        self.steps = self.first_steps + (self.top or 0) * (self.second_episodes or 0)

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

    def complete(self, logs):
        """Adds `episode_return`, the return of the weights the model holds (-loss)."""
        logs["episode_return"] = -float(logs["loss"])

    def validate(self, weights):
        return {}

    def close(self):
        self.rollout.close()

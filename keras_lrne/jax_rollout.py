"""On-device rollouts: a generation of `keras_lrne.tasks.JaxEnvironment` episodes as one
compiled JAX call (the loop itself is `keras_lrne.backend.jax.rollout`)."""

import time

import keras
import numpy as np
from keras import ops

from keras_lrne import genome
from keras_lrne.evaluators import EnvironmentEvaluator
from keras_lrne.layers import _vectorized


class JaxRollout:
    """Plays a population's episodes of a `JaxEnvironment` in one compiled call.

    The same interface as `keras_lrne.rollout.RolloutEvaluator.evaluate`: returns
    `(losses, mean_returns, logs)`, and sets `episode_steps` (member-major).

    Args:
        model: the built policy model.
        functions: the run's `PopulationFunctions` (variable layout).
        task: a `keras_lrne.tasks.JaxEnvironment`.
        seed: run seed (episode seeds derive from it and the generation).
    """

    def __init__(self, model, functions, task, seed):
        from keras_lrne.backend.jax import rollout

        self.model, self.functions, self.task, self.seed = model, functions, task, int(seed)
        self.trace_counts = {"generation": 0}
        kwargs = {"training": False} if getattr(model, "_call_has_training_arg", True) else {}

        def policy(shared, member, obs):
            self.trace_counts["generation"] += 1
            frozen, non_trainable, (on, mean, std, clip) = shared
            x = ops.cast(obs, "float32")
            # The task's observation normalisation (statistics frozen for the generation).
            x = ops.where(on > 0, ops.clip((x - mean) / std, -clip, clip), x)
            with _vectorized.member_calls():
                out, _ = model.stateless_call(functions.assemble(list(member), frozen),
                                              non_trainable, x, **kwargs)
            out = ops.reshape(ops.cast(out, "float32"), (ops.shape(obs)[0], -1))
            finite = ops.all(ops.isfinite(out), axis=-1)
            return task.export_output(ops.where(finite[:, None], out, 0.0)), finite

        self._generation = rollout.make_generation(task.env, task.env_params, policy,
                                                   task.episode_cap)

    def evaluate(self, population, generation, members=None, episodes=None, stage=0,
                 progress=None, progress_offset=0):
        """Plays the episodes of `members` (default: all): `(losses, returns, logs)`.

        `losses[i]` is minus the mean return of member `members[i]` (+inf when one of
        its episodes failed: a NaN or inf action, reward or observation)."""
        task = self.task
        population = genome.materialize(population)
        if members is not None:
            index = np.asarray(members, np.int32)
            population = [ops.take(v, index, axis=0) for v in population]
        count = int(population[0].shape[0])
        episodes = task.episodes if episodes is None else int(episodes)
        seeds = np.asarray(task.episode_seeds(self.seed, generation, stage, episodes),
                           np.int32)
        shared = (self.functions.frozen_values(), self.functions.non_trainable_values(),
                  task.normalization())
        if progress is not None:
            progress.begin()
        start = time.perf_counter()
        returns, steps, failed, sample, sampled = self._generation(
            shared, list(population), seeds)
        returns, steps, failed = (np.asarray(returns, np.float64), np.asarray(steps, np.int64),
                                  np.asarray(failed))
        elapsed = max(time.perf_counter() - start, 1e-9)
        #: The observations sampled for the normaliser (`task.observe`) by the last call.
        self.raw_sample = [np.asarray(sample)[np.asarray(sampled)]]
        task.observe(self.raw_sample)
        #: The steps each member-episode of the last call played (member-major).
        self.episode_steps = steps.reshape(-1).copy()
        member_failed = failed.any(axis=1)
        mean_returns = returns.mean(axis=1)
        losses = np.where(member_failed, np.inf, -mean_returns)
        total = int(steps.sum())
        if progress is not None:
            progress.advance_to(progress_offset + count * episodes, {"env_steps": total})
        logs = {"env_steps": total, "frames_per_second": total / elapsed,
                # No early-termination rule: every episode plays to its end or its cap.
                "early_termination_saved": 0.0,
                "failed_members": int(member_failed.sum())}
        return losses, mean_returns, logs

    def close(self):
        pass


class JaxEnvironmentEvaluator(EnvironmentEvaluator):
    """Scores a population on a `keras_lrne.tasks.JaxEnvironment` (loss = -mean return):
    each generation's episodes are one compiled JAX call (`JaxRollout`). Logs as
    `EnvironmentEvaluator`.

    Args:
        model: the built policy model.
        functions: the run's `PopulationFunctions`.
        task: a `keras_lrne.tasks.JaxEnvironment`.
        strategy: the run's strategy (its `num_members`).
        seed: the run seed.
    """

    def __init__(self, model, functions, task, strategy, seed):
        if keras.config.backend() != "jax":
            raise RuntimeError(
                "A `JaxEnvironment` is a JAX program: it needs the JAX backend, set "
                f"`KERAS_BACKEND=jax`. Received: KERAS_BACKEND={keras.config.backend()}"
            )
        super().__init__(task, strategy, JaxRollout(model, functions, task, seed))

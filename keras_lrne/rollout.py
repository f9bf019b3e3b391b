"""The rollout engine: a population plays environment episodes, batched per step.

Environments step on the CPU; every step, the policy forward of all still-running
member-episodes is one compiled, vectorised device call. Member-episodes that ended stop
stepping and stop costing compute: the live set is compacted into power-of-two buckets (a
handful of compiled shapes, traced in the first generations and reused afterwards), and
the live members' weights are gathered again only when the live set changes.
"""

import concurrent.futures
import time

import numpy as np
from keras import ops

from keras_lrne import backend as lrne_backend
from keras_lrne import genome
from keras_lrne.layers import _vectorized

#: Two lanes need at least this many environments each.
MIN_ENVS_PER_LANE = 4


def _num_lanes(task, num_envs):
    """1 or 2 lanes (see `RolloutEvaluator.evaluate`) from `task.rollout_lanes`.

    `"auto"`: two lanes when the vector environment steps in native threads (it releases
    the GIL, as ale-py's does), so that stepping and the policy forward overlap; one
    otherwise (measurements: benchmarks/README.md). With the policy on an accelerator
    the two overlap fully.
    """
    lanes = getattr(task, "rollout_lanes", "auto")
    if lanes not in ("auto", 1, 2) or isinstance(lanes, bool):
        raise ValueError(
            "Received an invalid value for `rollout_lanes`, expected 'auto', 1 or 2. "
            f"Received: rollout_lanes={lanes!r}"
        )
    if lanes == "auto":
        threaded = getattr(task, "threaded_vector_env", False)
        lanes = 2 if threaded else 1
    return 2 if lanes == 2 and num_envs >= 2 * MIN_ENVS_PER_LANE else 1


def _bucket(n, cap):
    size = 1
    while size < n:
        size *= 2
    return min(size, cap)


class RolloutEvaluator:
    """Evaluates a population on an `Environment` task (loss = -mean episode return).

    Args:
        model: the built policy model.
        functions: the run's `PopulationFunctions` (variable layout).
        task: a `keras_lrne.tasks.Environment`.
        population_size: members per generation.
        seed: run seed (episode seeds derive from it and the generation).
    """

    def __init__(self, model, functions, task, population_size, seed):
        self.model = model
        self.functions = functions
        self.task = task
        self.seed = int(seed)
        self.num_envs = int(task.num_envs or min(population_size * task.episodes, 64))
        bk = lrne_backend.get()
        self.num_lanes = _num_lanes(task, self.num_envs)
        sizes = [self.num_envs // self.num_lanes] * self.num_lanes
        sizes[0] += self.num_envs - sum(sizes)
        self.vector_envs = [task.make_vector_env(n) for n in sizes]
        self._pool = (concurrent.futures.ThreadPoolExecutor(self.num_lanes)
                      if self.num_lanes > 1 else None)
        self._policy_time = 0.0
        self._backend = bk
        self.trace_counts = {"policy": 0, "gather": 0}
        # One compiled function per live-set bucket size: each is traced once (and
        # TensorFlow does not take the few bucket shapes for accidental retracing).
        self._compiled = {}
        self._kwargs = (
            {"training": False} if getattr(model, "_call_has_training_arg", True) else {}
        )

    def close(self):
        for env in self.vector_envs:
            env.close()
        if self._pool is not None:
            self._pool.shutdown()

    def _bucket(self, live, cap):
        """The compiled batch size for `live` member-episodes: a power of two up to the
        number of environments, rounded up to a multiple of the device count."""
        size = _bucket(live, cap)
        devices = self.functions.num_devices
        return -(-size // devices) * devices

    def _functions_for(self, bucket):
        if bucket not in self._compiled:
            # Fresh wrappers per bucket: TensorFlow counts traces per Python function and
            # would warn about "retracing" for the few intended bucket shapes.
            def gather(*args):
                return self._gather_fn(*args)

            def policy(*args):
                return self._policy_fn(*args)

            distribution, bk = self.functions.distribution, self._backend
            if distribution is None:
                # Each bucket's functions see one signature: the cheapest calls.
                self._compiled[bucket] = (bk.compile_fixed(gather), bk.compile_fixed(policy))
            else:
                # The live members' weights are gathered onto the devices once per change
                # of the live set; each step, every device computes its share's actions.
                self._compiled[bucket] = (
                    bk.compile_sharded_output(gather, distribution.handle),
                    bk.per_device(policy, distribution.handle, (True, False, False, True)))
        return self._compiled[bucket]

    # -- compiled bodies -----------------------------------------------------------------
    def _gather_fn(self, population, index):
        self.trace_counts["gather"] += 1
        return [ops.take(v, index, axis=0) for v in population]

    def _policy_fn(self, weights, frozen, non_trainable, obs):
        self.trace_counts["policy"] += 1

        def one(args):
            member, x = args
            x = self.task.device_input(x)
            out, _ = self.model.stateless_call(
                self.functions.assemble(member, frozen), non_trainable, x[None],
                **self._kwargs,
            )
            return ops.reshape(ops.cast(out, "float32"), (-1,))

        with _vectorized.member_calls(), lrne_backend.get().quiet_vectorization():
            return ops.vectorized_map(one, (list(weights), obs))

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, population, generation, members=None, episodes=None, stage=0,
                 progress=None, progress_offset=0):
        """Plays the episodes of `members` (default: all) and returns `(losses, returns, logs)`.

        `losses[i]` is minus the mean return of member `members[i]`; a member whose
        environment crashed (in `reset` or `step`) or observed NaN or inf, or whose action
        was NaN, gets +inf (the worst); non-finite observations never reach the policy or
        the normaliser. If every reset raises, a `RuntimeError` names the environment and
        chains the first exception. Observations whose shape is not the observation
        space's raise a `ValueError`. Environment
        slots are refilled with the next member-episode as soon as one ends, so the
        vector of environments stays busy until the last episodes.

        With two lanes (`task.rollout_lanes`: by default for vector environments that
        step in native threads, e.g. ale-py's), the environments are split in two halves
        that take turns: while one half steps in a worker thread, the policy computes the
        other half's actions, so environment and policy time overlap. The order of all
        decisions is fixed, so results do not depend on thread timing.

        `progress` (a `keras_lrne.evaluators.Progress`) is advanced to
        `progress_offset + finished member-episodes` as episodes end.

        Each call also sets, per member-episode (member-major, the order of the returns),
        `self.episode_steps` (steps played; they sum to `logs["env_steps"]`) and
        `self.early_terminated` (ended by the task's early-termination rule).
        """
        task = self.task
        # Policies are small: low-rank members (OpenES perturbation_rank) play dense.
        population = genome.materialize(population)
        size = int(population[0].shape[0])
        members = np.arange(size) if members is None else np.asarray(members)
        episodes = task.episodes if episodes is None else int(episodes)
        seeds = np.asarray(task.episode_seeds(self.seed, generation, stage, episodes))
        run = _Episodes(len(members) * episodes, members, episodes, seeds, task.episode_cap)
        frozen = self.functions.frozen_values()
        non_trainable = self.functions.non_trainable_values()
        collect = getattr(task, "normalizer", None) is not None
        start_time = time.perf_counter()
        lanes = [lane for lane in (_Lane(env, run, task) for env in self.vector_envs)
                 if lane.live]
        pool = self._pool if len(lanes) > 1 else None
        pending = {}
        if progress is not None:
            progress.begin()
        while any(lane.live for lane in lanes):
            for i, lane in enumerate(lanes):
                if i in pending:
                    lane.advance(pending.pop(i).result(), task, collect)
                    if progress is not None:
                        _report(progress, progress_offset, run, lanes)
                if not lane.live:
                    continue
                actions, bad = self._actions(lane, population, frozen, non_trainable)
                lane.bad_action = bad
                if pool is None:
                    lane.advance(lane.env.step(actions, lane.live), task, collect)
                    if progress is not None:
                        _report(progress, progress_offset, run, lanes)
                else:
                    pending[i] = pool.submit(lane.env.step, actions, list(lane.live))
        elapsed = time.perf_counter() - start_time
        if progress is not None:
            progress.advance_to(progress_offset + run.slots, {"env_steps": int(run.steps.sum())})
        if run.started == 0 and run.reset_error is not None:
            error = run.reset_error
            raise RuntimeError(
                f"Every environment reset of generation {generation} failed, so no member "
                f"could be evaluated: the environment {_env_name(task)} raised "
                f"{type(error).__name__}: {error}"
            ) from error
        #: The observations sampled for the normaliser (`task.observe`) by the last call.
        self.raw_sample = run.raw_sample
        #: The steps each member-episode of the last call played (member-major: member
        #: `members[i]`'s episodes are `[i * episodes, (i + 1) * episodes)`).
        self.episode_steps = run.steps.copy()
        #: Per member-episode of the last call: whether `task.should_stop` ended it.
        self.early_terminated = run.early.copy()
        task.observe(run.raw_sample)
        per_member = run.returns.reshape(len(members), episodes)
        member_failed = run.failed.reshape(len(members), episodes).any(axis=1)
        mean_returns = per_member.mean(axis=1)
        losses = np.where(member_failed, np.inf, -mean_returns)
        total_steps = int(run.steps.sum())
        cap = run.cap
        saved = float(((cap - run.steps) * run.early).sum()) / float(cap * run.slots)
        logs = {
            "env_steps": total_steps,
            "frames_per_second": total_steps / max(elapsed, 1e-9),
            "policy_share": self._policy_time / max(elapsed, 1e-9),
            "early_termination_saved": saved,
            "failed_members": int(member_failed.sum()),
        }
        self._policy_time = 0.0
        return losses, mean_returns, logs

    def _actions(self, lane, population, frozen, non_trainable):
        """One compiled policy call for a lane's live member-episodes -> (actions, bad)."""
        live = lane.live
        bucket = self._bucket(len(live), lane.env.num_envs)
        gather, policy = self._functions_for(bucket)
        live_members = lane.run.members[lane.env_slot[live] // lane.run.episodes]
        key = (bucket, *live_members.tolist())
        if key != lane.live_key:
            index = np.resize(live_members, bucket).astype(np.int32)
            lane.weights = gather(population, index)
            lane.live_key = key
        x = self.task.host_input(lane.obs[live])
        if len(live) < bucket:
            x = np.concatenate([x, np.repeat(x[:1], bucket - len(live), 0)])
        t0 = time.perf_counter()
        out = self._backend.to_numpy(policy(lane.weights, frozen, non_trainable, x))
        self._policy_time += time.perf_counter() - t0
        out = out[: len(live)]
        bad_action = ~np.all(np.isfinite(out), axis=1)
        return self.task.postprocess(np.where(bad_action[:, None], 0.0, out)), bad_action


def _report(progress, offset, run, lanes):
    """Advances `progress` to the member-episodes that have finished."""
    finished = run.next_slot - sum(len(lane.live) for lane in lanes)
    if offset + finished > progress.done:
        progress.advance_to(offset + finished, {"env_steps": int(run.steps.sum())})


class _Episodes:
    """The member-episodes of one evaluation: a queue of slots and their results."""

    def __init__(self, slots, members, episodes, seeds, cap):
        self.slots, self.members, self.episodes, self.seeds = slots, members, episodes, seeds
        self.cap = cap
        self.next_slot = 0
        self.returns = np.zeros(slots)
        self.failed = np.zeros(slots, bool)
        self.steps = np.zeros(slots, np.int64)
        self.early = np.zeros(slots, bool)
        self.raw_sample = []
        self.started = 0  # member-episodes whose reset succeeded
        self.reset_error = None  # the first exception a reset raised

    def take(self, count):
        """The next `count` (or fewer) slots of the queue."""
        count = max(0, min(count, self.slots - self.next_slot))
        taken = np.arange(self.next_slot, self.next_slot + count)
        self.next_slot += count
        return taken


def _env_name(task):
    env = getattr(task, "env", task)
    return repr(env if isinstance(env, str) else getattr(env, "__name__", env))


class _Lane:
    """One vector environment and the member-episodes it is playing."""

    def __init__(self, env, run, task):
        self.env, self.run, self.task = env, run, task
        self.obs_shape = tuple(task.observation_space.shape)
        self.env_slot = np.zeros(env.num_envs, np.int64)
        self.rewards = [[] for _ in range(env.num_envs)]
        self.live_key, self.weights, self.bad_action = None, None, None
        self.obs = None
        self.live = self._start(list(range(env.num_envs)), first=True)

    def _bad_observation(self, obs, source):
        """True for a non-finite observation; raises for one of the wrong shape."""
        if np.shape(obs) != self.obs_shape:
            raise ValueError(
                f"The environment {_env_name(self.task)} returned an observation of shape "
                f"{np.shape(obs)} from `{source}()`, but its observation space (the task's "
                f"observations) has shape {self.obs_shape}: fix the environment or its "
                f"`observation_space`. Received: observation_space="
                f"{self.task.observation_space}"
            )
        obs = np.asarray(obs)
        return obs.dtype.kind in "fc" and not np.isfinite(obs).all()

    def _reset(self, envs, seeds, first):
        """Resets `envs`; returns (observations of those that reset, failed mask)."""
        try_reset = getattr(self.env, "try_reset_at", None)
        if try_reset is not None:
            obs, failed, error = try_reset(envs, seeds)
        else:
            try:
                obs = (self.env.reset(seeds, len(envs)) if first
                       else self.env.reset_at(envs, seeds))
                failed, error = np.zeros(len(envs), bool), None
            except Exception as exc:  # a crashing environment fails its members, not the run
                obs, failed, error = [], np.ones(len(envs), bool), exc
        if error is not None and self.run.reset_error is None:
            self.run.reset_error = error
        return obs, failed

    def _start(self, free, first=False):
        """Starts queued member-episodes on the `free` environments; returns those started.

        A member-episode whose reset raises or gives a non-finite observation failed; its
        environment takes the next one from the queue.
        """
        run, started = self.run, []
        while free:
            slots = run.take(len(free))
            if not len(slots):
                break
            envs, free = free[: len(slots)], free[len(slots):]
            self.env_slot[envs] = slots
            obs, failed = self._reset(envs, run.seeds[slots % run.episodes], first)
            first = False
            reset = iter(obs)
            for env_index, env_failed in zip(envs, failed):
                self.rewards[env_index] = []
                if not env_failed:
                    o = next(reset)
                    env_failed = self._bad_observation(o, "reset")
                if env_failed:
                    run.failed[self.env_slot[env_index]] = True
                    free.append(env_index)
                    continue
                if self.obs is None:
                    o = np.asarray(o)
                    self.obs = np.zeros((self.env.num_envs, *o.shape), o.dtype)
                self.obs[env_index] = o
                started.append(env_index)
        run.started += len(started)
        return sorted(started)

    def advance(self, result, task, collect):
        """Books one step's results; refills finished environments from the queue."""
        run = self.run
        new_obs, r, done, env_failed = result
        if collect and len(run.raw_sample) < 64:
            run.raw_sample.append(self.obs[self.live[:8]])
        still, free = [], []
        for j, env_index in enumerate(self.live):
            slot = self.env_slot[env_index]
            run.steps[slot] += 1
            if self.bad_action[j] or env_failed[j]:
                run.failed[slot] = True
                free.append(env_index)
                continue
            run.returns[slot] += r[j]
            self.rewards[env_index].append(r[j])
            if done[j] or run.steps[slot] >= run.cap:
                free.append(env_index)
            elif task.should_stop(self.rewards[env_index]):
                run.early[slot] = True
                free.append(env_index)
            elif self._bad_observation(new_obs[j], "step"):
                run.failed[slot] = True  # a NaN/inf observation must not reach the policy
                free.append(env_index)
            else:
                self.obs[env_index] = new_obs[j]
                still.append(env_index)
        self.live = sorted(still + self._start(free)) if free else still

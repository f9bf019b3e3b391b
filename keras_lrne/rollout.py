"""The rollout engine: a population plays environment episodes, batched per step.

Environments step on the CPU; every step, the policy forward of all still-running
member-episodes is one compiled, vectorised device call. Member-episodes that ended stop
stepping and stop costing compute: the live set is compacted into power-of-two buckets (a
handful of compiled shapes, traced in the first generations and reused afterwards), and
the live members' weights are gathered again only when the live set changes.
"""

import time

import numpy as np
from keras import ops

from keras_lrne import backend as lrne_backend


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
        self.vector_env = task.make_vector_env(self.num_envs)
        bk = lrne_backend.get()
        self._backend = bk
        self.trace_counts = {"policy": 0, "gather": 0}
        # One compiled function per live-set bucket size: each is traced once (and
        # TensorFlow does not take the few bucket shapes for accidental retracing).
        self._compiled = {}
        self._kwargs = (
            {"training": False} if getattr(model, "_call_has_training_arg", True) else {}
        )

    def close(self):
        self.vector_env.close()

    def _functions_for(self, bucket):
        if bucket not in self._compiled:
            self._compiled[bucket] = (self._backend.compile(self._gather_fn),
                                      self._backend.compile(self._policy_fn))
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
                self.functions._assemble(member, frozen), non_trainable, x[None],
                **self._kwargs,
            )
            return ops.reshape(ops.cast(out, "float32"), (-1,))

        return ops.vectorized_map(one, (list(weights), obs))

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, population, generation, members=None, episodes=None, stage=0):
        """Plays the episodes of `members` (default: all) and returns `(losses, returns, logs)`.

        `losses[i]` is minus the mean return of member `members[i]`; a member whose
        environment crashed or whose action was NaN gets +inf (the worst). Environment
        slots are refilled with the next member-episode as soon as one ends, so the
        vector of environments stays busy until the last episodes.
        """
        task = self.task
        size = int(population[0].shape[0])
        members = np.arange(size) if members is None else np.asarray(members)
        episodes = task.episodes if episodes is None else int(episodes)
        seeds = np.asarray(task.episode_seeds(self.seed, generation, stage, episodes))
        slots = len(members) * episodes
        returns = np.zeros(slots)
        failed = np.zeros(slots, bool)
        steps = np.zeros(slots, np.int64)
        early = np.zeros(slots, bool)
        frozen = self.functions.frozen_values()
        non_trainable = self.functions.non_trainable_values()
        collect = getattr(task, "normalizer", None) is not None
        raw_sample = []
        cap = task.episode_cap
        start_time = time.perf_counter()
        policy_time = 0.0

        count = min(self.num_envs, slots)
        env_slot = np.arange(count)
        next_slot = count
        obs = np.array(self.vector_env.reset(seeds[env_slot % episodes], count))
        rewards = [[] for _ in range(count)]
        live = list(range(count))
        live_key, weights = None, None
        while live:
            bucket = _bucket(len(live), self.num_envs)
            gather, policy = self._functions_for(bucket)
            live_members = members[env_slot[live] // episodes]
            key = (bucket, *live_members.tolist())
            if key != live_key:
                index = np.resize(live_members, bucket).astype(np.int32)
                weights = gather(population, index)
                live_key = key
            x = task.host_input(obs[live])
            if len(live) < bucket:
                x = np.concatenate([x, np.repeat(x[:1], bucket - len(live), 0)])
            t0 = time.perf_counter()
            out = self._backend.to_numpy(policy(weights, frozen, non_trainable, x))
            policy_time += time.perf_counter() - t0
            out = out[: len(live)]
            bad_action = ~np.all(np.isfinite(out), axis=1)
            actions = task.postprocess(np.where(bad_action[:, None], 0.0, out))
            new_obs, r, done, env_failed = self.vector_env.step(actions, live)
            if collect and len(raw_sample) < 64:
                raw_sample.append(obs[live[:8]])
            still, free = [], []
            for j, env_index in enumerate(live):
                slot = env_slot[env_index]
                steps[slot] += 1
                if bad_action[j] or env_failed[j]:
                    failed[slot] = True
                    free.append(env_index)
                    continue
                returns[slot] += r[j]
                rewards[env_index].append(r[j])
                if done[j] or steps[slot] >= cap:
                    free.append(env_index)
                elif task.should_stop(rewards[env_index]):
                    early[slot] = True
                    free.append(env_index)
                else:
                    obs[env_index] = new_obs[j]
                    still.append(env_index)
            refill = free[: max(0, slots - next_slot)]
            if refill:
                new_slots = np.arange(next_slot, next_slot + len(refill))
                next_slot += len(refill)
                env_slot[refill] = new_slots
                obs[refill] = self.vector_env.reset_at(refill, seeds[new_slots % episodes])
                for env_index in refill:
                    rewards[env_index] = []
                still = sorted(still + refill)
            live = still
        elapsed = time.perf_counter() - start_time
        task.observe(raw_sample)
        per_member = returns.reshape(len(members), episodes)
        member_failed = failed.reshape(len(members), episodes).any(axis=1)
        mean_returns = per_member.mean(axis=1)
        losses = np.where(member_failed, np.inf, -mean_returns)
        total_steps = int(steps.sum())
        saved = float(((cap - steps) * early).sum()) / float(cap * slots)
        logs = {
            "env_steps": total_steps,
            "frames_per_second": total_steps / max(elapsed, 1e-9),
            "policy_share": policy_time / max(elapsed, 1e-9),
            "early_termination_saved": saved,
            "failed_members": int(member_failed.sum()),
        }
        return losses, mean_returns, logs

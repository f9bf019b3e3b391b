"""Adapter from ale-py's native `AtariVectorEnv` to the rollout engine's vector protocol."""

import numpy as np

from keras_lrne._optional import require


def _require_ale():
    packages = "ale-py (>= 0.10, with its native vector environment)"
    ale_py = require("ale_py", "Atari tasks", "rl", packages)
    vector_env = require("ale_py.vector_env", "Atari tasks", "rl", packages)
    return ale_py, vector_env.AtariVectorEnv


class AleVectorEnv:
    """`ale_py.vector_env.AtariVectorEnv` behind the `reset(seeds, count)` /
    `step(actions, active)` protocol of `keras_lrne.rollout`.

    The native environment steps every sub-environment on every call (in C++ threads) and
    resets finished ones automatically; this adapter sends the no-op action (0) to the
    sub-environments the engine no longer steps and returns only the results of `active`.

    Args:
        game: ale-py ROM id (`"frostbite"`).
        num_envs: sub-environments.
        **kwargs: keyword arguments of `AtariVectorEnv`.
    """

    def __init__(self, game, num_envs, **kwargs):
        _, vector_env_class = _require_ale()
        # Every episode is a function of its seed alone: each reset is seeded (ale-py
        # reloads the ROM and reseeds the emulator, sticky actions included), and the
        # random no-op start, 0 to `noop_max - 1` steps (the paper's 0-29 for 30), is
        # drawn from the same seed and played by `step`. Unseeded resets are cheaper but
        # carry emulator state from one episode to the next in a sub-environment:
        # measured, the same population gave other returns with 1, 3 or 12
        # sub-environments (benchmarks/README.md gives the cost of a seeded reset). The
        # no-op steps count toward the episode's step cap; their rewards are not part of
        # the return.
        self.noop_max = int(kwargs.pop("noop_max", 0))
        kwargs["noop_max"] = 0
        self.env = vector_env_class(game, int(num_envs), **kwargs)
        self.num_envs = int(num_envs)
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self._noops = np.zeros(self.num_envs, np.int64)

    def _plan_noops(self, indices, seeds):
        for i, seed in zip(indices, np.asarray(seeds).reshape(-1)):
            if self.noop_max:
                rng = np.random.default_rng([int(seed), 7])
                self._noops[i] = rng.integers(0, self.noop_max)
            else:
                self._noops[i] = 0

    def reset(self, seeds, count):
        """Resets all sub-environments; returns the observations of the first `count`.

        Sub-environment `i < count` starts the episode of `seeds[i]` (a seeded reset and
        its number of random no-ops); the others are idle for this chunk.
        """
        seeds = np.asarray(seeds, np.int64).reshape(-1)[:count]
        if len(seeds) != count or count < 1 or count > self.num_envs:
            raise ValueError(
                f"Expected 1 <= count <= {self.num_envs} and one seed per reset environment. "
                f"Received: count={count}, len(seeds)={len(seeds)}"
            )
        obs, _ = self.env.reset(seed=np.resize(seeds, self.num_envs).astype(np.int64))
        self._noops[:] = 0
        self._plan_noops(range(count), seeds)
        return np.array(obs[:count])

    def reset_at(self, indices, seeds):
        """Resets only the sub-environments at `indices` (one seed each: a seeded partial
        reset with ale-py's `reset_mask`); returns their observations, aligned with
        `indices`.
        """
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        mask = np.zeros(self.num_envs, bool)
        mask[indices] = True
        order = np.argsort(indices)
        ordered = np.asarray(seeds, np.int64).reshape(-1)[order]
        obs, _ = self.env.reset(seed=ordered, options={"reset_mask": mask})
        self._plan_noops(indices, seeds)
        return np.array(obs[indices])

    def step(self, actions, active):
        """Steps all sub-environments: `actions` (aligned with `active`) for `active`,
        no-ops for the others and for sub-environments still playing their random no-op
        start. Returns `(obs, rewards, done, failed)` aligned with `active`.
        """
        active = np.asarray(active, np.int64).reshape(-1)
        full = np.zeros(self.num_envs, np.int64)
        full[active] = np.asarray(actions, np.int64).reshape(-1)
        starting = self._noops > 0
        full[starting] = 0
        self._noops[starting] -= 1
        obs, rewards, terminated, truncated, _ = self.env.step(full)
        rewards = np.asarray(rewards, np.float64)
        rewards[starting] = 0.0  # no-op starts are not part of the policy's return
        rewards = rewards[active]
        done = np.logical_or(terminated, truncated)[active]
        failed = ~np.isfinite(rewards)
        return obs[active], rewards, done, failed

    def close(self):
        self.env.close()

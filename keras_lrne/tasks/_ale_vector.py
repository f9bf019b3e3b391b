"""Adapter from ale-py's native `AtariVectorEnv` to the rollout engine's vector protocol."""

import numpy as np


def _require_ale():
    try:
        import ale_py
        from ale_py.vector_env import AtariVectorEnv
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "Atari tasks need ale-py (>= 0.10, with its native vector environment). Install "
            'the RL extra: pip install "keras-lrne[rl]"'
        ) from error
    return ale_py, AtariVectorEnv


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

    #: Every sub-environment advances on every step (finished ones receive no-ops).
    steps_all = True

    def __init__(self, game, num_envs, **kwargs):
        _, vector_env_class = _require_ale()
        self.env = vector_env_class(game, int(num_envs), **kwargs)
        self.num_envs = int(num_envs)
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space

    def reset(self, seeds, count):
        """Resets all sub-environments; returns the observations of the first `count`.

        Sub-environment `i < count` is seeded with `seeds[i]` (which fixes its random
        no-op start); the others, idle for this chunk, reuse the seeds cyclically.
        """
        seeds = np.asarray(seeds, np.int64).reshape(-1)[:count]
        if len(seeds) != count or count < 1 or count > self.num_envs:
            raise ValueError(
                f"Expected 1 <= count <= {self.num_envs} and one seed per reset environment. "
                f"Received: count={count}, len(seeds)={len(seeds)}"
            )
        all_seeds = np.resize(seeds, self.num_envs).astype(np.int64)
        obs, _ = self.env.reset(seed=all_seeds)
        return np.array(obs[:count])

    def reset_at(self, indices, seeds):
        """Resets only the sub-environments at `indices` (one seed each, a partial reset
        with ale-py's `reset_mask`); returns their observations, aligned with `indices`.
        """
        indices = np.asarray(indices, np.int64).reshape(-1)
        mask = np.zeros(self.num_envs, bool)
        mask[indices] = True
        # ale-py takes the seeds of the reset sub-environments in index order.
        order = np.argsort(indices)
        ordered_seeds = np.asarray(seeds, np.int64).reshape(-1)[order]
        obs, _ = self.env.reset(seed=ordered_seeds, options={"reset_mask": mask})
        return np.array(obs[indices])

    def step(self, actions, active):
        """Steps all sub-environments: `actions` (aligned with `active`) for `active`,
        no-ops for the others. Returns `(obs, rewards, done, failed)` aligned with `active`.
        """
        active = np.asarray(active, np.int64).reshape(-1)
        full = np.zeros(self.num_envs, np.int64)
        full[active] = np.asarray(actions, np.int64).reshape(-1)
        obs, rewards, terminated, truncated, _ = self.env.step(full)
        rewards = np.asarray(rewards, np.float64)[active]
        done = np.logical_or(terminated, truncated)[active]
        failed = ~np.isfinite(rewards)
        return obs[active], rewards, done, failed

    def close(self):
        self.env.close()

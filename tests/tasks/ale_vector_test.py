"""`AleVectorEnv` against ale-py's own seeded reset (a ROM load per reset)."""

import numpy as np
import pytest

from keras_lrne.tasks.atari import Atari

ale_py = pytest.importorskip("ale_py")
from ale_py.vector_env import AtariVectorEnv  # noqa: E402

from keras_lrne.tasks._ale_vector import AleVectorEnv  # noqa: E402

SEEDS = (0, 3, 12345, 2**31 - 2)


def _rom_load_state(game, seed, sticky):
    """ale-py's seeded reset: `random_seed`, a ROM load, `reset_game`."""
    ale = ale_py.ALEInterface()
    ale.setFloat("repeat_action_probability", sticky)
    ale.setInt("random_seed", seed)
    ale.loadROM(ale_py.roms.get_rom_path(game))
    ale.reset_game()
    return ale.cloneState(include_rng=True).serialize()


@pytest.mark.backend_independent
@pytest.mark.parametrize("version", ["v4", "v5"])
def test_a_seeded_reset_restores_the_state_of_a_rom_load(version):
    task = Atari("Frostbite", version=version)
    kwargs = dict(task.vector_env_kwargs(), noop_max=0)
    env = AleVectorEnv(task.game, 1, **kwargs)
    sticky = kwargs["repeat_action_probability"]
    for seed in SEEDS:
        # The emulator, the game's RAM and ALE's environment generator (sticky actions)
        # of a restored reset: byte for byte those of a ROM load with this seed.
        assert env._states.serialized(seed) == _rom_load_state(task.game, seed, sticky)
    env.close()


def _policy(obs, num_actions):
    """A deterministic function of the observation (so any difference shows)."""
    flat = obs.reshape(len(obs), -1)[:, ::97].astype(np.int64)
    return flat.sum(1) // 7 % num_actions


class _NativeSeeded:
    """The reference: ale-py's native vector environment, every reset seeded."""

    def __init__(self, game, num_envs, **kwargs):
        self.env = AtariVectorEnv(game, num_envs, **kwargs)
        self.num_envs = num_envs

    def reset(self, seeds):
        return self.env.reset(seed=np.asarray(seeds, np.int64))[0]

    def reset_at(self, index, seed):
        mask = np.zeros(self.num_envs, bool)
        mask[index] = True
        return self.env.reset(seed=np.array([seed]), options={"reset_mask": mask})[0][index]

    def step(self, actions):
        obs, rewards, terminated, truncated, _ = self.env.step(np.asarray(actions))
        return obs, rewards, terminated | truncated


@pytest.mark.backend_independent
@pytest.mark.parametrize("version", ["v4", "v5"])
def test_episodes_equal_those_of_ale_py_seeded_resets(version):
    # Two slots; slot 0 plays seed 5, then (dirty) seed 9, then seed 5 again, by partial
    # resets. A 160-frame cap (40 steps) ends episodes mid-skip, like a game over.
    task = Atari("Frostbite", version=version)
    kwargs = dict(task.vector_env_kwargs(), noop_max=0, max_num_frames_per_episode=160)
    reference = _NativeSeeded(task.game, 2, **kwargs)
    env = AleVectorEnv(task.game, 2, **kwargs)
    n = env.single_action_space.n
    try:
        expected, got = reference.reset([5, 11]), env.reset(np.array([5, 11]), 2)
        np.testing.assert_array_equal(got, expected)
        for seed in (9, 5, 2**31 - 2):
            for _ in range(40):
                actions = _policy(expected, n)
                expected, expected_rewards, expected_done = reference.step(actions)
                got, rewards, done, _ = env.step(actions, [0, 1])
                np.testing.assert_array_equal(got, expected)
                np.testing.assert_array_equal(rewards, expected_rewards)
                np.testing.assert_array_equal(done, expected_done)
            assert done.all()  # the cap
            expected = reference.reset_at(0, seed)[None]
            got = env.reset_at([0], [seed])
            np.testing.assert_array_equal(got, expected)
            expected = np.concatenate([expected, reference.reset_at(1, seed + 1)[None]])
            got = np.concatenate([got, env.reset_at([1], [seed + 1])])
    finally:
        reference.env.close()
        env.close()


class _Counting:
    """Delegates to an `ALEInterface` and counts the calls of each method."""

    def __init__(self, ale, counts):
        self._ale, self._counts = ale, counts

    def __getattr__(self, name):
        self._counts[name] = self._counts.get(name, 0) + 1
        return getattr(self._ale, name)


@pytest.mark.backend_independent
def test_a_seeded_reset_restores_a_state_and_loads_no_rom():
    env = Atari("Frostbite").make_vector_env(2)
    counts = {}
    env._ales = [_Counting(ale, counts) for ale in env._ales]
    try:
        first = env.reset(np.array([5, 6]), 2)
        for seed in (7, 8, 5):
            env.step(np.array([1, 2]), [0, 1])
            env.reset_at([0], [seed])
        np.testing.assert_array_equal(env.reset(np.array([5, 6]), 2), first)
    finally:
        env.close()
    assert counts.get("loadROM", 0) == 0
    assert counts["restoreState"] == 2 + 3 + 2


@pytest.mark.backend_independent
def test_atari_vector_env_rejects_bad_seeds():
    env = Atari("Frostbite").make_vector_env(1)
    with pytest.raises(ValueError, match=r"seeds=\[-1\]"):
        env.reset(np.array([-1]), 1)
    with pytest.raises(ValueError, match=r"seeds=\[2147483648\]"):
        env.reset_at([0], [2**31])
    env.close()

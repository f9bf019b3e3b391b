import gymnasium as gym
import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne.strategies import GA
from keras_lrne.tasks import Environment


def policy(task, hidden=8):
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([
        keras.Input(task.input_shape),
        keras_lrne.layers.FactorizedDense(hidden, rank=2, activation="relu"),
        keras.layers.Dense(task.num_outputs),
    ])
    model.compile(loss="mse")
    return model


def run(task, generations=3, seed=0, **kwargs):
    kwargs.setdefault("strategy", GA(8, 2, mutation_rate=0.1))
    model = policy(task)
    history = model.evolve(task, generations=generations, seed=seed, verbose=0, **kwargs)
    return model, history


def test_cartpole_logs_and_determinism():
    task = Environment("CartPole-v1", episodes=2, max_episode_steps=100)
    _model, history = run(task)
    logs = history.history
    for key in ("loss", "episode_return", "mean_return", "median_return", "max_return",
                "env_steps", "frames_per_second", "early_termination_saved",
                "member_evals_per_second"):
        assert len(logs[key]) == 3, key
    np.testing.assert_allclose(logs["loss"], -np.asarray(logs["episode_return"]))
    assert all(r <= 100 for r in logs["max_return"])
    assert all(e >= r for e, r in zip(logs["episode_return"], logs["mean_return"]))
    _, again = run(Environment("CartPole-v1", episodes=2, max_episode_steps=100))
    assert again.history["episode_return"] == logs["episode_return"]
    assert again.history["env_steps"] == logs["env_steps"]


def test_policy_compiles_once_per_live_bucket():
    task = Environment("CartPole-v1", max_episode_steps=60, num_envs=8)
    model, _ = run(task, generations=2)
    counts = dict(model.evolution_run.evaluator.rollout.trace_counts)
    # Live sets are compacted into power-of-two buckets: at most log2(8) + 1 shapes.
    assert 1 <= counts["policy"] <= 4
    model2, _ = run(Environment("CartPole-v1", max_episode_steps=60, num_envs=8),
                    generations=6)
    assert model2.evolution_run.evaluator.rollout.trace_counts["policy"] <= 4


def test_all_members_share_episode_seeds():
    task = Environment("CartPole-v1", episodes=3)
    a = task.episode_seeds(5, 0)
    assert a == task.episode_seeds(5, 0) and a != task.episode_seeds(5, 1)
    # Identical members get identical returns: the episodes are the same for everyone.
    model = policy(task)
    model.evolve(task, strategy=GA(4, 1, mutation_rate=1e-12), generations=1, seed=0,
                 verbose=0)
    evaluator = model.evolution_run.evaluator.rollout
    state = model.evolution_state
    population = model.evolution_run.strategy.ask(state)[0]
    same = [keras.ops.repeat(v[:1], 4, axis=0) for v in population]
    _losses, returns, _ = evaluator.evaluate(same, generation=3)
    assert len(set(np.round(returns, 6).tolist())) == 1


def test_continuous_actions_and_observation_normalisation():
    task = Environment("Pendulum-v1", max_episode_steps=20, normalize_observations=True,
                       action_transform="tanh")
    assert task.num_outputs == 1
    actions = task.postprocess(np.array([[100.0], [-100.0], [0.0]]))
    np.testing.assert_allclose(actions[:, 0], [2.0, -2.0, 0.0], atol=1e-5)
    _, history = run(task, generations=2)
    assert task.normalizer.count > 0
    assert np.all(np.isfinite(history.history["episode_return"]))


class Exploding(gym.Env):
    """Crashes on the third step for some seeds; a stand-in for a flaky simulator."""

    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        if action == 1 and self.t == 3:
            raise RuntimeError("simulator exploded")
        return np.full(3, 0.1 * self.t, np.float32), 1.0, self.t >= 10, False, {}


def test_a_crashing_environment_fails_that_member_not_the_run():
    task = Environment(Exploding)
    model, history = run(task, generations=2, strategy=GA(16, 2, mutation_rate=1.0))
    losses = model.evolution_state.losses
    assert np.isinf(losses).any() and np.isfinite(losses).any()
    assert history.history["episode_return"][-1] == 10.0
    assert history.history["failed_members"][0] > 0


class EarlyStop(Environment):
    def should_stop(self, rewards):
        return len(rewards) >= 5


def test_early_termination_is_logged():
    task = EarlyStop("CartPole-v1", max_episode_steps=50)
    _, history = run(task, generations=1)
    saved = history.history["early_termination_saved"][0]
    assert 0.0 < saved <= 0.9
    assert history.history["max_return"][0] == 5.0


def test_episode_steps_per_member_episode():
    task = EarlyStop("CartPole-v1", episodes=2, max_episode_steps=50)
    model, _ = run(task, generations=1, strategy=GA(4, 1))
    rollout = model.evolution_run.evaluator.rollout
    population = model.evolution_run.strategy.ask(model.evolution_state)[0]
    _losses, _returns, logs = rollout.evaluate(population, generation=1)
    assert rollout.episode_steps.shape == (4 * 2,)
    assert int(rollout.episode_steps.sum()) == logs["env_steps"]
    assert rollout.early_terminated.shape == (4 * 2,)
    # CartPole rewards every step, so an episode is cut at 5 steps or fell earlier.
    np.testing.assert_array_equal(rollout.early_terminated, rollout.episode_steps == 5)
    _, _, logs = rollout.evaluate(population, generation=1, members=[2], episodes=3)
    assert rollout.episode_steps.shape == (3,)
    assert int(rollout.episode_steps.sum()) == logs["env_steps"]


def test_two_stage_selection_only_promotes_reevaluated_members():
    task = Environment("CartPole-v1", max_episode_steps=40, reevaluate_top=3,
                       reevaluate_episodes=2)
    strategy = GA(8, 2, mutation_rate=0.5)
    model, history = run(task, generations=2, strategy=strategy)
    losses = model.evolution_state.losses
    assert np.isfinite(losses).sum() == 3  # only the re-evaluated top 3 are eligible
    assert history.history["env_steps"][0] > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"env": "CartPole-v7"}, "CartPole-v1"),
        ({"env": "CartPole-v1", "episodes": 0}, "`episodes`"),
        ({"env": "CartPole-v1", "action_transform": "tanh"}, "action_transform"),
        ({"env": "Pendulum-v1", "action_transform": "argmax"}, "action_transform"),
        ({"env": 3}, "`env`"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Environment(**kwargs)


def test_model_output_must_match_the_action_space():
    task = Environment("CartPole-v1")
    model = keras_lrne.Sequential([keras.Input(task.input_shape), keras.layers.Dense(5)])
    model.compile(loss="mse")
    with pytest.raises(ValueError, match="needs 2"):
        model.evolve(task, strategy=GA(4, 1), generations=1, verbose=0)


def test_atari_lanes_overlap_stepping_without_changing_results():
    """Two lanes (half the envs step while the policy runs on the other half) give the same
    results as strict alternation: decisions are made in a fixed order."""
    histories = {}
    for overlap in (True, False):
        task = keras_lrne.tasks.Atari("Pong", max_episode_steps=25, num_envs=8)
        task.rollout_lanes = 2 if overlap else 1
        keras.utils.set_random_seed(0)
        model = keras_lrne.presets.atari_policy("small", num_actions=task.num_outputs)
        history = model.evolve(task, strategy=GA(10, 2), generations=2, seed=4, verbose=0)
        rollout = model.evolution_run.evaluator.rollout
        assert rollout.num_lanes == (2 if overlap else 1)
        assert sum(env.num_envs for env in rollout.vector_envs) == 8
        histories[overlap] = history.history
    for key in ("episode_return", "mean_return", "env_steps"):
        assert histories[True][key] == histories[False][key], key


def test_rollout_lanes_default_and_bad_value():
    from keras_lrne.rollout import _num_lanes

    task = Environment("CartPole-v1")
    assert _num_lanes(task, 16) == 1  # gymnasium envs step in Python: no lanes
    atari = keras_lrne.tasks.Atari("Pong", num_envs=8)
    assert _num_lanes(atari, 16) == 2  # ale-py steps in native threads
    assert _num_lanes(atari, 7) == 1  # too few environments for two lanes
    atari.rollout_lanes = 2
    assert _num_lanes(atari, 8) == 2 and _num_lanes(atari, 7) == 1
    atari.rollout_lanes = 3
    with pytest.raises(ValueError, match="rollout_lanes"):
        _num_lanes(atari, 16)


class Diverging(gym.Env):
    """Observes NaN after action 1 on the second step: a stand-in for a diverging simulator."""

    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.full(3, 0.5, np.float32), {}

    def step(self, action):
        self.t += 1
        value = np.nan if action == 1 and self.t == 2 else 0.1 * self.t
        return np.full(3, value, np.float32), 1.0, self.t >= 5, False, {}


def test_non_finite_observations_fail_the_member_and_spare_the_normaliser():
    task = Environment(Diverging, normalize_observations=True)
    model, history = run(task, generations=2, strategy=GA(12, 2, mutation_rate=1.0))
    normalizer = task.normalizer
    assert normalizer.count > 0
    assert np.isfinite(normalizer.mean).all() and np.isfinite(normalizer.var).all()
    losses = model.evolution_state.losses
    assert np.isinf(losses).any() and np.isfinite(losses).any()
    assert all(failed > 0 for failed in history.history["failed_members"])
    assert history.history["episode_return"] == [5.0, 5.0]


class FlakyReset(gym.Env):
    """Every third reset (counted over all instances) raises."""

    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)
    resets = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        FlakyReset.resets += 1
        if FlakyReset.resets % 3 == 0:
            raise OSError("simulator lost its licence")
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(3, np.float32), 1.0, self.t >= 4, False, {}


def test_a_raising_reset_fails_that_member_not_the_run():
    FlakyReset.resets = 0
    task = Environment(FlakyReset)
    _, history = run(task, generations=2, strategy=GA(6, 2))
    assert history.history["failed_members"] == [2, 2]  # resets 3, 6, then 9, 12
    assert history.history["episode_return"] == [4.0, 4.0]


class BrokenReset(FlakyReset):
    def reset(self, seed=None, options=None):
        raise OSError("simulator lost its licence")


def test_every_reset_failing_raises_naming_the_env_and_the_error():
    task = Environment(BrokenReset)
    with pytest.raises(RuntimeError, match=r"Every environment reset of generation 0 failed"
                       r".*'BrokenReset' raised OSError: simulator lost its licence") as info:
        run(task, generations=1, strategy=GA(4, 1))
    assert isinstance(info.value.__cause__, OSError)


class WrongShape(FlakyReset):
    """Declares (3,) observations but returns `reset_shape` / `step_shape` ones."""

    def __init__(self, reset_shape=(3,), step_shape=(3,)):
        self.reset_shape, self.step_shape = reset_shape, step_shape

    def reset(self, seed=None, options=None):
        self.t = 0
        return np.zeros(self.reset_shape, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(self.step_shape, np.float32), 1.0, self.t >= 4, False, {}


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((4,), (3,)), r"'wrong_shape' returned an observation of shape \(4,\) from `reset\(\)`"
                       r", but its observation space .* has shape \(3,\)"),
        (((3,), (1,)), r"of shape \(1,\) from `step\(\)`, but .* has shape \(3,\)"),
    ],
)
def test_observations_of_the_wrong_shape_fail_clearly(shapes, match):
    def wrong_shape():
        return WrongShape(*shapes)

    task = Environment(wrong_shape)
    with pytest.raises(ValueError, match=match):
        run(task, generations=1, strategy=GA(4, 1))

import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne.strategies import GA
from keras_lrne.tasks.atari import Atari
from keras_lrne.tasks.car_racing import CarRacing, area_resize_96_to_64
from keras_lrne.tasks.control import Control

LOG_KEYS = ("episode_return", "mean_return", "env_steps", "frames_per_second",
            "early_termination_saved")


def tiny_conv_policy(task):
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([
        keras.Input(task.input_shape),
        keras.layers.Conv2D(4, 8, strides=8),
        keras.layers.Flatten(),
        keras.layers.Dense(task.num_outputs),
    ])
    model.compile(loss="mse")  # unused by environment tasks
    return model


def tiny_dense_policy(task):
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([
        keras.Input(task.input_shape),
        keras_lrne.layers.FactorizedDense(8, rank=2, activation="tanh"),
        keras.layers.Dense(task.num_outputs),
    ])
    model.compile(loss="mse")
    return model


def evolve_twice(make_task, make_model, population=4):
    histories = []
    for _ in range(2):
        task = make_task()
        model = make_model(task)
        history = model.evolve(task, strategy=GA(population, 1), generations=2, seed=0,
                               verbose=0)
        histories.append(history.history)
    first, second = histories
    for key in LOG_KEYS:
        assert len(first[key]) == 2, key
    assert all(steps > 0 for steps in first["env_steps"])
    assert first["episode_return"] == second["episode_return"]
    assert first["env_steps"] == second["env_steps"]
    return first


# -- Atari -------------------------------------------------------------------------------
def test_atari_spaces_and_names():
    task = Atari("Frostbite")
    assert task.game == "frostbite"
    assert task.input_shape == (84, 84, 12)
    assert task.num_outputs == 18
    assert task.episode_cap == 2500 and task.episodes == 1
    assert task.observation_space.shape == (4, 84, 84, 3)
    assert Atari("pong").num_outputs == 6  # ROM ids work; minimal action set by default
    assert Atari("Pong", full_action_space=True).num_outputs == 18
    assert Atari("SpaceInvaders", max_episode_steps=50).episode_cap == 50


def test_atari_preprocess_is_frame_major():
    task = Atari("Pong")
    frames = np.random.default_rng(0).integers(0, 256, (2, 4, 84, 84, 3)).astype(np.uint8)
    x = task.preprocess(frames)
    assert x.shape == (2, 84, 84, 12) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    for frame in range(4):
        np.testing.assert_allclose(x[1, :, :, 3 * frame:3 * frame + 3],
                                   frames[1, frame] / 255.0, rtol=1e-6)


def test_atari_vector_env_protocol():
    task = Atari("Frostbite")
    env = task.make_vector_env(3)
    try:
        obs = env.reset(np.array([7, 8]), 2)
        assert obs.shape == (2, 4, 84, 84, 3) and obs.dtype == np.uint8
        obs, rewards, done, failed = env.step(np.array([1, 2]), [0, 2])
        assert obs.shape == (2, 4, 84, 84, 3)
        assert rewards.shape == done.shape == failed.shape == (2,)
        again = env.reset(np.array([7, 8]), 2)
        np.testing.assert_array_equal(again, env.reset(np.array([7, 8]), 2))
    finally:
        env.close()


@pytest.mark.parametrize("kwargs, match", [
    ({"game": "Frostbyte"}, "Did you mean: 'Frostbite'"),
    ({"game": "Frostbite", "episodes": 0}, "episodes=0"),
    ({"game": "Frostbite", "max_episode_steps": 0}, "max_episode_steps=0"),
    ({"game": "Frostbite", "noop_max": -1}, "noop_max=-1"),
    ({"game": "Frostbite", "version": "v3"}, "version='v3'"),
])
def test_atari_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Atari(**kwargs)


def _atari_returns(num_envs):
    import keras

    import keras_lrne
    from keras_lrne.strategies import GA

    task = Atari("Frostbite", max_episode_steps=120, episodes=2, num_envs=num_envs)
    keras.utils.set_random_seed(0)
    model = keras_lrne.presets.atari_policy("small", num_actions=task.num_outputs)
    history = model.evolve(task, strategy=GA(6, 2, mutation_rate=0.5), generations=2,
                           seed=1, verbose=0)
    return {k: history.history[k] for k in ("episode_return", "mean_return", "env_steps")}


# The property is the host environment's (ale-py and numpy), whatever computes the
# policy: the test runs on the default backend.
@pytest.mark.slow
@pytest.mark.backend_independent
def test_an_atari_episode_is_a_function_of_its_seed_alone():
    # Unseeded resets carried emulator state from one episode to the next in a
    # sub-environment: with 1, 3 or 12 sub-environments (other episodes before each one
    # in its slot) the same population returned 50, 60 and 60/40. Every reset is seeded.
    env = Atari("Frostbite").make_vector_env(1)
    rng = np.random.default_rng(0)
    try:
        def episode(seed, actions):
            frames = [env.reset(np.array([seed]), 1)]
            for action in actions:
                frames.append(env.step(np.array([action]), [0])[0])
            return np.stack(frames)

        first = episode(5, rng.integers(0, 4, 60))
        episode(9, rng.integers(0, 4, 60))  # another episode in the same slot
        np.testing.assert_array_equal(episode(5, np.zeros(0, int)), first[:1])
    finally:
        env.close()
    one, three = _atari_returns(1), _atari_returns(3)
    assert one == three
    noops = [np.random.default_rng([s, 7]).integers(0, 30) for s in range(2000)]
    assert min(noops) == 0 and max(noops) == 29  # the paper's 0-29 no-op start


@pytest.mark.slow
def test_atari_evolve_end_to_end_deterministic():
    logs = evolve_twice(lambda: Atari("Frostbite", max_episode_steps=50), tiny_conv_policy)
    assert all(steps <= 4 * 50 for steps in logs["env_steps"])


# -- CarRacing ---------------------------------------------------------------------------
def test_car_racing_spaces_and_preprocess():
    task = CarRacing(max_episode_steps=30)
    assert task.input_shape == (64, 64, 12)
    assert task.num_outputs == 3
    assert task.episode_cap == 30 and task.episodes == 2
    assert task.action_transform == "identity"
    env = task.make_env()
    try:
        obs, _ = env.reset(seed=0)
    finally:
        env.close()
    assert obs.shape == (4, 96, 96, 3) and obs.dtype == np.uint8
    x = task.preprocess(obs[None])
    assert x.shape == (1, 64, 64, 12) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_area_resize_is_exact_area_average():
    frames = np.random.default_rng(1).integers(0, 256, (2, 96, 96, 3)).astype(np.uint8)
    # Exact area average: upsample by 2 (192 = 64 * 3), then average 3x3 blocks.
    up = frames.astype(np.float64).repeat(2, axis=1).repeat(2, axis=2)
    expected = up.reshape(2, 64, 3, 64, 3, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(area_resize_96_to_64(frames), expected, rtol=1e-5)


def test_car_racing_early_termination_rule():
    task = CarRacing(max_episode_steps=30)
    assert not task.should_stop([-0.1] * 20)
    assert task.should_stop([-0.1] * 21)
    assert task.should_stop([3.0] + [-0.1] * 21)
    assert not task.should_stop([-0.1] * 10 + [3.0] + [-0.1] * 10)
    assert not task.should_stop([])
    off = CarRacing(max_episode_steps=30, early_termination=False)
    assert not off.should_stop([-0.1] * 50)


@pytest.mark.parametrize("kwargs, match", [
    ({"episodes": 0}, "episodes=0"),
    ({"max_episode_steps": None}, "max_episode_steps=None"),
    ({"early_termination": "yes"}, "early_termination='yes'"),
    ({"action_transform": "argmax"}, "action_transform='argmax'"),
])
def test_car_racing_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CarRacing(**kwargs)


@pytest.mark.slow
def test_car_racing_evolve_end_to_end_deterministic():
    logs = evolve_twice(lambda: CarRacing(episodes=1, max_episode_steps=30),
                        tiny_conv_policy, population=2)
    assert all(steps <= 2 * 30 for steps in logs["env_steps"])


# -- Control -----------------------------------------------------------------------------
def test_control_spaces():
    task = Control("HalfCheetah-v5")
    assert task.input_shape == (17,)
    assert task.num_outputs == 6
    assert task.episode_cap == 1000
    assert task.action_transform == "tanh"
    actions = task.postprocess(np.array([[100.0, -100.0, 0.0, 0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(actions[0, :3], [1.0, -1.0, 0.0], atol=1e-6)
    pendulum = Control("Pendulum-v1", max_episode_steps=20, action_transform="clip")
    assert pendulum.input_shape == (3,) and pendulum.num_outputs == 1
    assert pendulum.episode_cap == 20


def test_control_preprocess_normalizes():
    task = Control("Pendulum-v1")
    obs = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -2.0]])
    x = task.preprocess(obs)
    assert x.shape == (2, 3) and x.dtype == np.float32
    task.observe([obs])
    np.testing.assert_allclose(task.preprocess(obs).mean(axis=0), 0.0, atol=1e-5)


def test_control_normaliser_ignores_non_finite_observations():
    task = Control("Pendulum-v1")
    obs = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -2.0]])
    poisoned = np.array([[np.nan, 0.0, 0.0], [0.0, np.inf, 0.0], [0.0, 0.0, -np.inf]])
    task.observe([obs[:1], poisoned, obs[1:]])
    normalizer = task.normalizer
    assert normalizer.count == 2
    np.testing.assert_allclose(normalizer.mean, obs.mean(axis=0))
    np.testing.assert_allclose(normalizer.var, obs.var(axis=0))
    task.observe([poisoned])  # nothing finite: the statistics do not move
    assert normalizer.count == 2 and np.isfinite(normalizer.var).all()


@pytest.mark.parametrize("returned", ["CartPole-v1", None])
def test_env_factory_must_return_a_gymnasium_env(returned):
    def factory():
        return returned

    with pytest.raises(ValueError, match=rf"`env`.*returned {returned!r} of type "
                                         rf"{type(returned).__name__}\. Received: env=<function"):
        keras_lrne.tasks.Environment(factory)


@pytest.mark.parametrize("env_id, match", [
    ("HalfCheeta-v5", "Did you mean: 'HalfCheetah-v5'"),
    ("CarRacing-v3", "vector observations.*env_id='CarRacing-v3'"),
    ("CartPole-v1", "Box action space.*env_id='CartPole-v1'"),
])
def test_control_rejects_unsuitable_envs(env_id, match):
    with pytest.raises(ValueError, match=match):
        Control(env_id)


@pytest.mark.parametrize("kwargs, match", [
    ({"episodes": 0}, "episodes=0"),
    ({"action_transform": "argmax"}, "action_transform='argmax'"),
])
def test_control_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Control("Pendulum-v1", **kwargs)


@pytest.mark.slow
def test_control_evolve_end_to_end_deterministic():
    evolve_twice(lambda: Control("HalfCheetah-v5", max_episode_steps=50), tiny_dense_policy)


def test_atari_device_input_matches_preprocess():
    from keras import ops

    task = Atari("Pong", num_envs=2)
    env = task.make_vector_env(2)
    obs = env.reset([1, 2], 2)
    for _ in range(3):
        obs, *_ = env.step([1, 2], [0, 1])
    env.close()
    expected = task.preprocess(obs)
    host = task.host_input(obs)
    assert host.dtype == np.uint8
    for i in range(2):
        got = ops.convert_to_numpy(task.device_input(ops.convert_to_tensor(host[i])))
        np.testing.assert_allclose(got, expected[i], rtol=0, atol=1e-7)

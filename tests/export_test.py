import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne.strategies import GA
from keras_lrne.tasks import Atari, Control, Environment


def evolved(task, model):
    model.evolve(task, strategy=GA(4, 1), generations=1, seed=0, verbose=0)
    return model


def mlp(task):
    keras.utils.set_random_seed(0)
    return keras_lrne.Sequential([keras.Input(task.input_shape), keras.layers.Dense(8),
                                  keras.layers.Dense(task.num_outputs)])


@pytest.mark.slow
def test_exported_cartpole_policy_plays_without_keras_lrne(tmp_path):
    task = Environment("CartPole-v1", max_episode_steps=50)
    model = evolved(task, mlp(task))
    path = keras_lrne.export_policy(model, task, str(tmp_path / "policy"))
    assert os.path.isfile(os.path.join(path, "keras_lrne_policy.json"))
    code = textwrap.dedent(f"""
        import sys, numpy as np, tensorflow as tf, gymnasium as gym
        policy = tf.saved_model.load({path!r})
        env = gym.make("CartPole-v1", max_episode_steps=50)
        obs, _ = env.reset(seed=3)
        total, done = 0.0, False
        while not done:
            action = int(policy.serve(obs[None].astype(np.float32)).numpy()[0])
            obs, reward, terminated, truncated, _ = env.step(action)
            total += reward
            done = terminated or truncated
        assert "keras_lrne" not in sys.modules
        print("RETURN", total)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RETURN" in result.stdout


def test_exported_actions_match_the_task(tmp_path):
    import tensorflow as tf

    task = Control("Pendulum-v1", max_episode_steps=20)
    model = evolved(task, mlp(task))
    assert task.normalizer.count > 0  # the run's normalisation is baked in
    policy = tf.saved_model.load(keras_lrne.export_policy(model, task, str(tmp_path / "p")))
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    expected = task.postprocess(model.predict(task.preprocess(obs), verbose=0))
    np.testing.assert_allclose(policy.serve(obs).numpy(), expected, atol=1e-5)


def test_exported_atari_policy_takes_raw_frames(tmp_path):
    import tensorflow as tf

    task = Atari("Pong", max_episode_steps=10, num_envs=2)
    model = evolved(task, keras_lrne.presets.atari_policy("small",
                                                          num_actions=task.num_outputs))
    policy = tf.saved_model.load(keras_lrne.export_policy(model, task, str(tmp_path / "p")))
    frames = np.random.default_rng(0).integers(0, 255, (2, 4, 84, 84, 3), dtype=np.uint8)
    expected = task.postprocess(model.predict(task.preprocess(frames), verbose=0))
    np.testing.assert_array_equal(policy.serve(frames).numpy(), expected)


def test_export_errors(tmp_path):
    task = Environment("CartPole-v1")
    with pytest.raises(ValueError, match="never evolved"):
        keras_lrne.export_policy(mlp(task), task, str(tmp_path / "p"))
    with pytest.raises(ValueError, match="`task`"):
        keras_lrne.export_policy(mlp(task), "CartPole-v1", str(tmp_path / "p"))


def test_carracing_export_input_matches_preprocess():
    from keras import ops

    from keras_lrne.tasks import CarRacing

    task = CarRacing(max_episode_steps=10)
    frames = np.random.default_rng(0).integers(0, 255, (2, 4, 96, 96, 3), dtype=np.uint8)
    got = ops.convert_to_numpy(task.export_input(ops.convert_to_tensor(frames)))
    np.testing.assert_allclose(got, task.preprocess(frames), atol=1e-6)


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(4)
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))


def test_merge_lora_refuses_a_subclassed_model_naming_the_supported_kinds():
    model = _Subclassed()
    model(np.zeros((1, 3), "float32"))
    model.hidden.enable_lora(2)
    with pytest.raises(ValueError, match=r"`merge_lora` supports Sequential and functional "
                       r"models.*Received: model='.*' of the subclassed class _Subclassed"):
        keras_lrne.merge_lora(model)
    # A functional model of the same layers merges.
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4)
    functional = keras.Model(inputs, keras.layers.Dense(1)(hidden(inputs)))
    hidden.enable_lora(2)
    merged = keras_lrne.merge_lora(functional)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    np.testing.assert_allclose(merged.predict(x, verbose=0), functional.predict(x, verbose=0),
                               rtol=1e-6)

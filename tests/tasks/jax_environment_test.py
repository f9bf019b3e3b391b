"""`JaxEnvironment`: a generation of gymnax episodes as one compiled JAX call."""

import importlib.util

import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne.distribution import PopulationParallel, RayWorkers
from keras_lrne.strategies import GA
from keras_lrne.tasks import JaxEnvironment

# gymnax is installed apart from the `test` extra (`pip install --no-deps gymnax==1.0.1`:
# its gymnasium<1.4 pin is for its visualiser only); .ci/run installs it.
jax_only = pytest.mark.skipif(
    keras.config.backend() != "jax" or importlib.util.find_spec("gymnax") is None,
    reason="JaxEnvironment runs on the JAX backend, with gymnax installed")


def policy_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras_lrne.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                                 keras.layers.Dense(2)])


def task(**kwargs):
    kwargs.setdefault("max_episode_steps", 50)
    return JaxEnvironment("CartPole-v1", **kwargs)


def reference_episode(env, params, model, seed, cap, normalize=None, seen=None):
    """One episode stepped in Python, step by step, with the model's own call (on the
    observations `normalize` returns; each raw one the policy saw appended to `seen`)."""
    import jax

    reset_key, step_root = jax.random.split(jax.random.PRNGKey(seed))
    obs, state = env.reset(reset_key, params)
    total, steps = 0.0, 0
    for t in range(cap):
        x = np.asarray(obs)[None]
        if seen is not None:
            seen.append(x)
        if normalize is not None:
            x = normalize(x)
        logits = keras.ops.convert_to_numpy(model(x, training=False))
        action = int(np.argmax(logits[0]))
        obs, state, reward, terminated, truncated, _ = env.step(
            jax.random.fold_in(step_root, t), state, action, params)
        total += float(reward)
        steps += 1
        if bool(terminated) or bool(truncated):
            break
    return total, steps


@jax_only
def test_a_compiled_generation_equals_stepping_each_member_in_python():
    from keras_lrne import engine

    jax_task = task(episodes=2)
    model = policy_model()
    run = engine.Run(model, GA(4, 2), 3, True)
    evaluator = engine.make_evaluator(run, jax_task)
    assert type(evaluator).__name__ == "JaxEnvironmentEvaluator"
    rng = np.random.default_rng(0)
    population = [rng.normal(0, 1, (4, *v.shape)).astype("float32")
                  for v in model.trainable_variables]
    losses, logs = evaluator.evaluate([keras.ops.convert_to_tensor(p) for p in population], 5)
    steps = evaluator.rollout.episode_steps
    seeds = jax_task.episode_seeds(3, 5)
    expected_returns, expected_steps = [], []
    for member in range(4):
        model.set_weights([p[member] for p in population])
        episodes = [reference_episode(jax_task.env, jax_task.env_params, model, s, 50)
                    for s in seeds]
        expected_returns.append(np.mean([r for r, _ in episodes]))
        expected_steps += [n for _, n in episodes]
    np.testing.assert_array_equal(steps, expected_steps)
    np.testing.assert_allclose(-losses, expected_returns, rtol=1e-6)
    assert len(set(expected_steps)) > 1  # the episodes end at different steps
    assert logs["env_steps"] == sum(expected_steps)
    np.testing.assert_allclose(logs["mean_return"], np.mean(expected_returns))


@jax_only
def test_observations_are_normalised_inside_the_call_and_the_statistics_updated():
    from keras_lrne import engine
    from keras_lrne.tasks.environment import RunningNormalizer

    jax_task = task(episodes=2, normalize_observations=True)
    assert jax_task.fingerprint()["settings"]["normalize_observations"] is True
    # Statistics far from the identity, so that normalising changes the actions.
    stats = {"mean": [0.05, 0.3, -0.02, 0.4], "var": [0.01, 0.2, 0.003, 0.5], "count": 100.0}
    jax_task.set_state({"normalizer": stats})
    model = policy_model(1)
    evaluator = engine.make_evaluator(engine.Run(model, GA(4, 2), 3, True), jax_task)
    rng = np.random.default_rng(1)
    population = [rng.normal(0, 1, (4, *v.shape)).astype("float32")
                  for v in model.trainable_variables]
    reference = RunningNormalizer((4,))
    reference.set_state(stats)
    losses, _ = evaluator.evaluate(population, 2)
    expected_returns, expected_steps, seen = [], [], []
    for member in range(4):
        model.set_weights([p[member] for p in population])
        episodes = [reference_episode(jax_task.env, jax_task.env_params, model, s, 50,
                                      normalize=reference, seen=seen)
                    for s in jax_task.episode_seeds(3, 2)]
        expected_returns.append(np.mean([r for r, _ in episodes]))
        expected_steps += [n for _, n in episodes]
    np.testing.assert_array_equal(evaluator.rollout.episode_steps, expected_steps)
    np.testing.assert_allclose(-losses, expected_returns, rtol=1e-6)
    # After the generation, the statistics take in what the first 8 member-episodes
    # (here: all of them) saw in their first 64 steps, as `Environment`'s sample.
    reference.update(np.concatenate(seen))
    assert jax_task.normalizer.count == 100 + sum(expected_steps)
    np.testing.assert_allclose(jax_task.normalizer.mean, reference.mean, rtol=1e-5)
    np.testing.assert_allclose(jax_task.normalizer.var, reference.var, rtol=1e-5)
    with pytest.raises(ValueError, match="normalize_observations=1"):
        task(normalize_observations=1)


@jax_only
def test_a_nan_policy_fails_its_member_only():
    from keras_lrne import engine

    model = policy_model()
    evaluator = engine.make_evaluator(engine.Run(model, GA(4, 2), 0, True), task())
    population = [np.stack([keras.ops.convert_to_numpy(v)] * 4)
                  for v in model.trainable_variables]
    population[0][1] = np.nan
    losses, logs = evaluator.evaluate(population, 0)
    assert np.isinf(losses[1]) and np.isfinite(np.delete(losses, 1)).all()
    assert logs["failed_members"] == 1
    assert evaluator.rollout.episode_steps[1] == 1  # it failed at its first step


@jax_only
def test_evolve_logs_episode_returns_and_repeats_with_the_same_seed():
    def run():
        model = policy_model()
        history = model.evolve(task(), strategy=GA(4, 2), generations=2, seed=7, verbose=0)
        return history, model

    first, model = run()
    second, _ = run()
    for key in ("episode_return", "mean_return", "env_steps", "loss", "frames_per_second"):
        assert len(first.history[key]) == 2, key
    for key in ("episode_return", "mean_return", "max_return", "env_steps", "loss"):
        assert first.history[key] == second.history[key], key
    assert all(0 < s <= 4 * 50 for s in first.history["env_steps"])
    # One compiled generation, traced once for the whole run.
    assert model.evolution_run.evaluator.rollout.trace_counts["generation"] == 1


class Stop(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("power cut")


@jax_only
def test_a_resumed_run_ends_bit_identical_to_an_unbroken_one(tmp_path):
    # With observation normalisation: its statistics are part of the checkpoint.
    tasks = []

    def run(callbacks):
        model = policy_model()
        tasks.append(task(normalize_observations=True))
        history = model.evolve(tasks[-1], strategy=GA(4, 2), generations=3, seed=1,
                               verbose=0, callbacks=callbacks)
        return history, [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]

    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="power cut"):
        run([keras.callbacks.BackupAndRestore(backup), Stop()])
    resumed, resumed_weights = run([keras.callbacks.BackupAndRestore(backup)])
    straight, straight_weights = run([])
    assert resumed.epoch == [0, 1, 2]
    for key in ("loss", "episode_return", "mean_return", "env_steps"):
        assert resumed.history[key] == straight.history[key], key
    for a, b in zip(resumed_weights, straight_weights):
        np.testing.assert_array_equal(a, b)
    assert tasks[1].get_state() == tasks[2].get_state()
    assert tasks[2].normalizer.count > 0


@pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="the TensorFlow refusal")
def test_tensorflow_is_refused_with_a_pointer_to_jax():
    with pytest.raises(RuntimeError, match=r"JAX program.*KERAS_BACKEND=jax"):
        JaxEnvironment("CartPole-v1")


@jax_only
@pytest.mark.parametrize("kwargs, match", [
    ({"episodes": 0}, "`episodes`.*episodes=0"),
    ({"max_episode_steps": -1}, "`max_episode_steps`.*max_episode_steps=-1"),
    ({"action_transform": "softmax"}, "`action_transform`.*action_transform='softmax'"),
    ({"action_transform": "clip"}, "action_transform`='clip' does not fit"),
    ({"env": "NoSuchEnv-v0"}, "gymnax environment name for `env`.*env='NoSuchEnv-v0'"),
    ({"env": 42}, "invalid value for `env`.*env=42"),
])
def test_bad_arguments_are_named(kwargs, match):
    kwargs = {"env": "CartPole-v1", **kwargs}
    with pytest.raises(ValueError, match=match):
        JaxEnvironment(**kwargs)


@jax_only
def test_a_missing_gymnax_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gymnax", None)  # `import gymnax` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "keras-lrne\[gymnax\]"'):
        JaxEnvironment("CartPole-v1")


@jax_only
def test_an_environment_without_a_step_limit_needs_max_episode_steps():
    import dataclasses

    import gymnax

    env, params = gymnax.make("CartPole-v1")
    unlimited = dataclasses.replace(params, max_steps_in_episode=None)
    with pytest.raises(ValueError, match="max_episode_steps=None"):
        JaxEnvironment(env, env_params=unlimited)
    made = JaxEnvironment((env, params), max_episode_steps=20)
    assert made.episode_cap == 20 and made.num_outputs == 2 and made.input_shape == (4,)


@jax_only
@pytest.mark.parametrize("distribution", [lambda: PopulationParallel(),
                                          lambda: RayWorkers(num_workers=1)])
def test_distributions_are_refused_for_now(distribution):
    with pytest.raises(ValueError, match=r"JaxEnvironment.*not supported yet"):
        policy_model().evolve(task(), strategy=GA(4, 2), generations=1, verbose=0,
                              distribution=distribution())

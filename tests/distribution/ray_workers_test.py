"""`RayWorkers`: evaluation in Ray actors gives the recorded one-process runs, survives
a SIGKILLed worker, and fails fast and clearly (local Ray, 2 workers)."""

import json
import os
import signal
import sys
import time
import warnings

import gymnasium as gym
import keras
import numpy as np
import pytest
from _helpers import reference_runs

import keras_lrne
from keras_lrne.distribution import RayWorkers
from keras_lrne.strategies import GA, PGPE, SNES, OpenES

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
# The environments below are defined here: send them to the workers by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- before any Ray runtime starts --------------------------------------------------------
def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    model = keras_lrne.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    with pytest.raises(ImportError, match=r'pip install "keras-lrne\[distributed\]"'):
        model.evolve(np.ones((4, 2)), np.ones((4, 1)), strategy=GA(4, 1), verbose=0,
                     distribution=RayWorkers(num_workers=1))


def test_an_unreachable_cluster_fails_fast():
    model = keras_lrne.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"address='127.0.0.1:9'.*ray start --head"):
        model.evolve(np.ones((4, 2)), np.ones((4, 1)), strategy=GA(4, 1), verbose=0,
                     distribution=RayWorkers(address="127.0.0.1:9"))
    assert time.perf_counter() - start < 15
    assert not ray.is_initialized()


@pytest.mark.parametrize("kwargs, message", [
    ({"num_workers": 0}, "num_workers=0"),
    ({"address": ""}, "address=''"),
    ({"address": "somewhere"}, "address='somewhere'"),
    ({"resources_per_worker": {"CPU": -1}}, "resources_per_worker="),
    ({"resources_per_worker": ["CPU"]}, "resources_per_worker="),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        workers = RayWorkers(**kwargs)
        workers._check_reachable()


# -- one local Ray runtime for the rest of the module -------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with warnings.catch_warnings():  # JAX warns about Ray's fork+exec
        warnings.simplefilter("ignore", RuntimeWarning)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference():
    with open(reference_runs.path()) as f:
        return json.load(f)


@pytest.mark.parametrize("name", ["arrays", "environment"])
def test_two_workers_give_the_one_process_run(local_ray, reference, name):
    # "arrays": 14 members in 4 chunks with validation data; "environment": CartPole
    # with two-stage selection.
    workers = RayWorkers(num_workers=2)
    reference_runs.check(reference_runs.run(name, distribution=workers), reference[name])
    assert 0 < workers.bytes_sent < 4000  # seeds and indices, not weights


class KillAWorker(keras.callbacks.Callback):
    """SIGKILLs one worker process in the middle of generation 2."""

    def __init__(self, workers):
        super().__init__()
        self.workers, self.killed = workers, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 2 and batch == 1 and self.killed is None:
            self.killed = self.workers.worker_pids()[0]
            os.kill(self.killed, signal.SIGKILL)


# The tests marked backend_independent below check orchestration: a worker's
# replacement, the merge of observation statistics, a Python fitness (host code),
# error propagation and the CLI's wiring. CI runs them on the default backend only; that
# workers evaluate members as one process does is checked on every backend by
# test_two_workers_give_the_one_process_run and test_open_es_in_workers_equals_one_process.
@pytest.mark.backend_independent
def test_a_killed_worker_is_replaced_and_the_run_ends_the_same(local_ray, reference):
    workers = RayWorkers(num_workers=2)
    killer = KillAWorker(workers)
    received = reference_runs.run("arrays", distribution=workers, callbacks=[killer])
    assert killer.killed is not None
    reference_runs.check(received, reference["arrays"])


def _open_es(distribution, perturbation_rank=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                   keras.layers.Dense(1)])
    model.compile(loss="mse")
    strategy = OpenES(6, perturbation_rank=perturbation_rank)
    history = model.evolve(x, x.sum(axis=1, keepdims=True), strategy=strategy,
                           generations=3, seed=2, verbose=0, distribution=distribution)
    return history.history["loss"], model.get_weights()


@pytest.mark.parametrize("perturbation_rank", [None, 1])
def test_open_es_in_workers_equals_one_process(local_ray, perturbation_rank):
    (loss_a, weights_a), (loss_b, weights_b) = (
        _open_es(None, perturbation_rank), _open_es(RayWorkers(2), perturbation_rank))
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("strategy", ["snes", "pgpe"])
def test_snes_and_pgpe_workers_receive_seeds_and_give_the_same_run(local_ray, strategy):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1))).astype("float32")
    losses = []
    for distribution in (None, RayWorkers(num_workers=2)):
        keras.utils.set_random_seed(0)
        model = keras_lrne.Sequential([keras.Input((4,)),
                                       keras.layers.Dense(4, activation="tanh"),
                                       keras.layers.Dense(1)])
        model.compile(loss="mse")
        make = SNES if strategy == "snes" else PGPE
        history = model.evolve(x, y, strategy=make(6, sigma=0.5), generations=3, seed=0,
                               verbose=0, distribution=distribution)
        losses.append(history.history["loss"])
    assert losses[0] == losses[1]


class Drifting(gym.Env):
    """Observations drift with the action: the normaliser's statistics depend on play."""

    observation_space = gym.spaces.Box(-10, 10, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.x = 0, float(self.np_random.uniform(-1, 1))
        return np.asarray([self.x, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        self.x += 0.3 if action else -0.2
        return np.asarray([self.x, self.t], np.float32), -abs(self.x), self.t >= 6, False, {}


def _normalized(workers):
    task = keras_lrne.tasks.Environment(Drifting, normalize_observations=True)
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input(task.input_shape),
                                   keras.layers.Dense(task.num_outputs)])
    history = model.evolve(task, strategy=GA(8, 2, mutation_rate=0.5), generations=3,
                           seed=4, verbose=0, distribution=workers)
    return history.history["episode_return"], task.normalizer.get_state()


@pytest.mark.backend_independent
def test_normalisation_does_not_depend_on_the_worker_count(local_ray):
    (returns_1, stats_1), (returns_2, stats_2) = (_normalized(RayWorkers(1)),
                                                  _normalized(RayWorkers(2)))
    assert returns_1 == returns_2
    assert json.dumps(stats_1, default=str) == json.dumps(stats_2, default=str)


class BrokenReset(Drifting):
    def reset(self, seed=None, options=None):
        raise OSError("simulator lost its licence")


def fitting_fitness(model):
    """A Python fitness (defined here: Ray ships it by value); members whose first kernel
    entry is large raise, and some return NaN or a string, so failures are named from the
    workers too."""
    kernel = np.asarray(model.trainable_variables[0])
    if kernel[0, 0] > 0.5:
        raise ValueError(f"kernel[0, 0]={kernel[0, 0]:.3f}")
    if kernel[0, 0] < -0.7:
        return float("nan")
    if kernel[0, 0] < -0.6:
        return "0.5"
    x = np.linspace(-1, 1, 24, dtype="float32").reshape(6, 4)
    return float(-np.mean((model.predict(x, verbose=0)[:, 0] - x[:, 0]) ** 2))


@pytest.mark.backend_independent
def test_a_python_fitness_gives_the_same_run_on_two_workers(local_ray):
    runs = []
    for distribution in (None, RayWorkers(num_workers=2)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = keras_lrne.evolve(
                model, keras_lrne.tasks.Fitness(fitting_fitness, per_member=True),
                strategy=GA(12, 3, mutation_rate=0.5), generations=3, seed=5, verbose=0,
                distribution=distribution)
        warned = [str(w.message) for w in caught if "fitness function failed" in str(w.message)]
        # Generation 0's first kernel entries: which members raise, or return NaN or text.
        first = [keras_lrne.engine.rebuild_member(model, 0, m)[0][0, 0] for m in range(12)]
        runs.append((history.history, warned, [np.asarray(v) for v in model.trainable_variables]))
    (one, one_warned, one_weights), (two, two_warned, two_weights) = runs
    not_numbers = sum(k < -0.6 for k in first)
    assert not_numbers > 0
    assert one["failed_members"][0] == sum(k > 0.5 for k in first) + not_numbers
    for key in ("fitness", "mean_fitness", "median_fitness", "failed_members", "loss"):
        assert one[key] == two[key], key
    assert sum(one["failed_members"]) > 0 and one_warned == two_warned
    for a, b in zip(one_weights, two_weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.backend_independent
def test_a_worker_that_raises_fails_the_run_with_its_error(local_ray):
    task = keras_lrne.tasks.Environment(BrokenReset)
    model = keras_lrne.Sequential([keras.Input(task.input_shape),
                                   keras.layers.Dense(task.num_outputs)])
    with pytest.raises(RuntimeError, match=r"A Ray worker failed while evaluating members "
                       r"\[0, 1, 2, 3\] of generation 0: .*simulator lost its licence"):
        model.evolve(task, strategy=GA(4, 1), generations=1, verbose=0,
                     distribution=RayWorkers(1))


@pytest.mark.backend_independent
def test_the_cli_evaluates_in_workers(local_ray, tmp_path):
    from keras_lrne import cli

    summaries = []
    for extra in ([], ["--workers", "2"]):
        output = tmp_path / f"run{len(summaries)}"
        assert cli.main(["control", "--env", "CartPole-v1", "--population", "4", "--parents",
                         "2", "--generations", "2", "--max-episode-steps", "30",
                         "--verbose", "0", "--no-export", "--output", str(output), *extra]) == 0
        summaries.append(json.loads((output / "summary.json").read_text())["summary"])
    assert summaries[0]["final_episode_return"] == summaries[1]["final_episode_return"]
    assert summaries[0]["env_steps"] == summaries[1]["env_steps"] > 0


@pytest.mark.slow
def test_atari_in_two_workers_equals_one_process(local_ray):
    def run(distribution):
        task = keras_lrne.tasks.Atari("Frostbite", max_episode_steps=120, episodes=2,
                                      num_envs=3)
        keras.utils.set_random_seed(0)
        model = keras_lrne.presets.atari_policy("small", num_actions=task.num_outputs)
        history = model.evolve(task, strategy=GA(6, 2, mutation_rate=0.5),
                               generations=2, seed=1, verbose=0, distribution=distribution)
        return {k: history.history[k] for k in ("episode_return", "mean_return",
                                                "env_steps")}, model.get_weights()

    (one, weights_one), (two, weights_two) = run(None), run(RayWorkers(2))
    assert one == two
    for a, b in zip(weights_one, weights_two):
        np.testing.assert_array_equal(a, b)

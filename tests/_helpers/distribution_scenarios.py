"""Runs of `tests/distribution/distribution_test.py` on 4 simulated CPU devices, in a subprocess.

`python tests/_helpers/distribution_scenarios.py OUT.json` (with `KERAS_BACKEND` set) creates 4
devices before the backend starts (JAX: `XLA_FLAGS`; TensorFlow: logical CPU devices),
runs the recorded reference runs (`reference_runs.py`) with the population split over
them, and a few more runs, and writes the results to OUT.json.
"""

import os
import sys

DEVICES = 4

if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={DEVICES}")
else:
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * DEVICES)

import json  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import reference_runs  # noqa: E402

import keras_lrne  # noqa: E402
from keras_lrne.distribution import PopulationParallel  # noqa: E402


class Stop(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("power cut")


def interrupted_and_resumed(backup):
    """The arrays reference run cut after generation 1 on 4 devices, resumed on 2."""
    try:
        reference_runs.run("arrays", distribution=PopulationParallel(4),
                           callbacks=[keras.callbacks.BackupAndRestore(backup), Stop()])
    except RuntimeError as error:
        assert "power cut" in str(error), error
    else:
        raise AssertionError("the run was not interrupted")
    return reference_runs.run("arrays", distribution=PopulationParallel(2),
                              callbacks=[keras.callbacks.BackupAndRestore(backup)])


def _tiny_regression(hidden, strategy, generations, seed, distribution):
    """`(history, model)` of a Dense(hidden) -> Dense(1) model evolved on 16 x 4 data."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input((4,)), keras.layers.Dense(hidden),
                                   keras.layers.Dense(1)])
    model.compile(loss="mse")
    history = model.evolve(x, y, strategy=strategy, generations=generations,
                           seed=seed, verbose=0, distribution=distribution)
    return history, model


def open_es(distribution, perturbation_rank=None):
    history, model = _tiny_regression(
        3, keras_lrne.strategies.OpenES(6, perturbation_rank=perturbation_rank), 3, 2,
        distribution)
    return {"loss": history.history["loss"],
            "weights": [w.reshape(-1).tolist() for w in model.get_weights()]}


NATIVE_STRATEGIES = {"cma_es": "CMAES", "sep_cma_es": "SepCMAES", "snes": "SNES",
                     "pgpe": "PGPE"}


def native_strategy(name, distribution):
    """A native strategy (its mean starts from the model's weights) for 2 generations of
    6 members: 2 per device on 4 devices, with 2 padded slots on the last one."""
    strategy = getattr(keras_lrne.strategies, NATIVE_STRATEGIES[name])(6)
    history, model = _tiny_regression(2, strategy, 2, 3, distribution)
    return {"loss": history.history["loss"],
            "weights": [w.reshape(-1).tolist() for w in model.get_weights()]}


def fitness(distribution):
    """Compiled `Fitness` runs: accuracy with targets, and a reward of a two-input
    model's outputs without targets."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")

    def accuracy(logits, labels):
        predicted = keras.ops.cast(keras.ops.argmax(logits, axis=-1), "int32")
        return keras.ops.mean(keras.ops.cast(keras.ops.equal(predicted, labels), "float32"))

    keras.utils.set_random_seed(0)
    classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    two_inputs = keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(joined))
    results = {}
    for name, model, task in (
        ("accuracy", classifier, keras_lrne.tasks.Fitness(accuracy, data=(x, y))),
        ("reward", two_inputs, keras_lrne.tasks.Fitness(
            lambda outputs: keras.ops.mean(outputs), data={"a": x, "b": x[:, :2]})),
    ):
        history = keras_lrne.evolve(model, task, strategy=keras_lrne.strategies.GA(8, 2),
                                    generations=3, seed=1, verbose=0,
                                    distribution=distribution)
        results[name] = history.history["fitness"]
    return results


def cli_runs(directory):
    """`keras-lrne control` on CartPole with `--devices all` and `--devices 1`."""
    from keras_lrne import cli

    summaries = {}
    for devices in ("all", "1"):
        output = os.path.join(directory, f"cli_{devices}")
        code = cli.main(["control", "--env", "CartPole-v1", "--population", "4", "--parents",
                         "2", "--generations", "2", "--max-episode-steps", "30",
                         "--verbose", "0", "--no-export", "--devices", devices, "--output",
                         output])
        assert code == 0, code
        with open(os.path.join(output, "summary.json")) as f:
            summaries[devices] = json.load(f)["summary"]
    return summaries


def main(out):
    results = {"devices": PopulationParallel().devices}
    for name in reference_runs.SCENARIOS:
        results[name] = reference_runs.run(name, distribution=PopulationParallel())
    results["resumed"] = interrupted_and_resumed(os.path.join(os.path.dirname(out), "b"))
    results["open_es"] = {"one": open_es(None), "four": open_es(PopulationParallel())}
    results["open_es_low_rank"] = {"one": open_es(None, 1),
                                   "four": open_es(PopulationParallel(), 1)}
    for name in NATIVE_STRATEGIES:
        results[name] = {"one": native_strategy(name, None),
                         "four": native_strategy(name, PopulationParallel())}
    results["fitness"] = {"one": fitness(None), "four": fitness(PopulationParallel())}
    # What the GA keeps between generations: its survivors only (every device expands
    # its own members from them and their seeds inside the evaluation).
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    x = np.ones((4, 3), "float32")
    model.evolve(x, x[:, :1], strategy=keras_lrne.strategies.GA(8, 2), generations=2,
                 seed=0, verbose=0, distribution=PopulationParallel())
    results["survivor_rows"] = int(model.evolution_state.survivors[0].shape[0])
    run = model.evolution_run
    results["plan"] = {"members_per_device": run.members_per_device,
                       "num_devices": run.functions.num_devices}
    results["cli"] = cli_runs(os.path.dirname(out))
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])

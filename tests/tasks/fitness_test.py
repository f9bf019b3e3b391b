"""`keras_lrne.tasks.Fitness`: compiled fitness on data, Python fitness per member,
direction, logs, failures, resume signature and argument checks."""

import contextlib
import functools
import io
import logging
import math
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne.strategies import GA, OpenES
from keras_lrne.tasks import Fitness


def classification_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = ((x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32"))
    return x, y


def classifier(seed=1):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    return model


def accuracy(logits, labels):
    predicted = keras.ops.cast(keras.ops.argmax(logits, axis=-1), "int32")
    return keras.ops.mean(keras.ops.cast(keras.ops.equal(predicted, labels), "float32"))


def numpy_accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


@pytest.mark.slow
def test_compiled_accuracy_improves_is_exact_and_repeats():
    x, y = classification_data()
    histories, finals = [], []
    for _ in range(2):
        model = classifier()
        history = keras_lrne.evolve(model, Fitness(accuracy, data=(x, y)),
                                    strategy=GA(32, 4), generations=20, seed=3,
                                    batch_size=16, verbose=0)
        histories.append(history.history)
        finals.append([np.asarray(v) for v in model.trainable_variables])
    logs = histories[0]
    assert histories[0]["fitness"] == histories[1]["fitness"]
    for a, b in zip(*finals):
        np.testing.assert_array_equal(a, b)
    assert {"fitness", "mean_fitness", "median_fitness", "loss"} <= set(logs)
    assert logs["fitness"][-1] > logs["fitness"][0]
    assert logs["loss"] == [-f for f in logs["fitness"]]
    assert all(m <= f + 1e-7 for m, f in zip(logs["mean_fitness"], logs["fitness"]))
    # The batch-size-weighted mean over 6 batches is the accuracy over all 96 samples.
    assert logs["fitness"][-1] == pytest.approx(numpy_accuracy(model, x, y), abs=1e-6)


def test_compiled_argmax_fitness_logs_no_bitcast_while_loop_warning(caplog):
    # On TensorFlow, vectorising `keras.ops.argmax` (its negative-zero fix bitcasts)
    # used to log "Using a while_loop for converting Bitcast" at every trace.
    x, y = classification_data(n=32)
    with caplog.at_level(logging.WARNING):
        keras_lrne.evolve(classifier(), Fitness(accuracy, data=(x, y)), strategy=GA(8, 2),
                          generations=1, seed=0, verbose=0)
    assert not [r for r in caplog.records if "converting Bitcast" in r.getMessage()]


def test_a_reward_from_outputs_without_targets_and_minimising():
    x, _ = classification_data(n=32)

    def mean_output(outputs):  # a reward computed from the outputs alone
        return keras.ops.mean(outputs)

    results = {}
    for maximize in (True, False):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        history = keras_lrne.evolve(model, Fitness(mean_output, data=x, maximize=maximize),
                                    strategy=OpenES(16, sigma=0.05, learning_rate=0.05),
                                    generations=10, seed=0, verbose=0)
        results[maximize] = history.history
        final = float(np.mean(model.predict(x, verbose=0)))
        assert history.history["fitness"][-1] == pytest.approx(final, rel=1e-4, abs=1e-6)
    assert results[True]["fitness"][-1] > results[True]["fitness"][0]
    assert results[False]["fitness"][-1] < results[False]["fitness"][0]
    assert results[False]["loss"] == results[False]["fitness"]


@pytest.mark.slow
def test_a_two_input_model_on_a_compiled_fitness_with_validation():
    x, y = classification_data()
    data = {"a": x, "b": x[:, :2]}
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(1)
        a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
        joined = keras.layers.Concatenate()([keras.layers.Dense(8, activation="relu")(a), b])
        model = keras.Model({"a": a, "b": b}, keras.layers.Dense(3)(joined))
        history = keras_lrne.evolve(model, Fitness(accuracy, data=(data, y)),
                                    validation_data=(data, y), strategy=GA(32, 4),
                                    generations=20, seed=3, verbose=0)
        runs.append(history.history)
    logs = runs[0]
    assert runs[0]["fitness"] == runs[1]["fitness"]  # a seed gives the same run
    assert logs["fitness"][-1] > logs["fitness"][0]
    assert logs["val_fitness"][-1] == pytest.approx(logs["fitness"][-1], abs=1e-6)
    assert logs["val_loss"][-1] == pytest.approx(-logs["fitness"][-1], abs=1e-6)


def python_accuracy(model):
    x, y = classification_data(n=48)
    return numpy_accuracy(model, x, y)


@pytest.mark.slow
def test_python_fitness_is_called_per_member_and_repeats():
    runs = []
    for _ in range(2):
        model = classifier()
        history = keras_lrne.evolve(model, Fitness(python_accuracy, per_member=True),
                                    strategy=GA(8, 2), generations=4, seed=2, verbose=0)
        runs.append(history.history)
    assert runs[0]["fitness"] == runs[1]["fitness"]
    assert runs[0]["failed_members"] == [0, 0, 0, 0]
    assert runs[0]["fitness"][-1] >= runs[0]["fitness"][0]
    # The model holds the elite afterwards.
    assert python_accuracy(model) == pytest.approx(runs[0]["fitness"][-1])


def test_failing_and_nan_members_rank_last_and_are_counted():
    calls = []

    def flaky(model):
        calls.append(None)
        member = (len(calls) - 1) % 8
        if member == 1:
            raise ZeroDivisionError("boom")
        if member == 2:
            return float("nan")
        if member == 3:
            return -np.inf
        return float(np.sum(np.asarray(model.trainable_variables[-1])))

    model = classifier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = keras_lrne.evolve(model, Fitness(flaky, per_member=True),
                                    strategy=GA(8, 2), generations=2, seed=0, verbose=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    failed = [m for m in messages if "failed for 3 of 8 members" in m]
    assert len(failed) == 2  # one per generation
    assert "member 1: ZeroDivisionError: boom" in failed[0]
    # NaN and inf are failures too.
    assert history.history["failed_members"] == [3, 3]
    losses = np.asarray(model.evolution_state.losses) if hasattr(
        model, "evolution_state") else np.asarray(model._evolution_state.losses)
    assert np.isinf(losses[1:4]).all()
    assert np.isfinite(history.history["fitness"]).all()


def test_the_failure_warning_points_at_the_evolve_call():
    def half_fail(model):
        return math.nan if np.asarray(model.trainable_variables[0])[0, 0] > 0 else 1.0

    model = classifier()
    with pytest.warns(RuntimeWarning, match="fitness function failed") as record:
        keras_lrne.evolve(model, Fitness(half_fail, per_member=True), strategy=GA(8, 2),
                          generations=1, seed=0, verbose=0)
    failures = [w for w in record if "fitness function failed" in str(w.message)]
    assert failures and all(w.filename == __file__ for w in failures), [
        (w.filename, w.lineno) for w in failures]
    with pytest.warns(RuntimeWarning, match="fitness function failed") as record:
        keras_lrne.Model(model.inputs, model.outputs).evolve(
            Fitness(half_fail, per_member=True), strategy=GA(8, 2), generations=1, seed=0,
            verbose=0)
    assert all(w.filename == __file__ for w in record
               if "fitness function failed" in str(w.message))


@pytest.mark.parametrize("value, returned", [
    (float("nan"), "returned nan"),
    (math.inf, "returned inf"),
    ("0.5", r"returned a str \('0.5'\)"),
    (True, r"returned a bool \(True\)"),
    (np.bool_(False), "returned a bool"),
    (None, "returned a NoneType"),
    (1 + 2j, "returned a complex"),
    (np.complex64(1), "returned a complex64 of shape \\(\\) and dtype complex64"),
    (np.ones(2, "float32"), "returned a ndarray of shape \\(2,\\)"),
], ids=["nan", "inf", "str", "bool", "numpy-bool", "none", "complex", "numpy-complex",
        "vector"])
def test_a_generation_where_no_member_returns_a_real_number_stops_the_run(value, returned):
    def objective(model):
        return value

    with pytest.raises(RuntimeError, match=r"Every member's fitness failed in generation 0.*"
                       r"member 0: \w+Error: The fitness function .*objective " + returned):
        keras_lrne.evolve(classifier(), Fitness(objective, per_member=True),
                          strategy=GA(4, 1), generations=2, seed=0, verbose=0)


def test_real_numbers_of_every_kind_are_a_fitness():
    values = [1, 0.5, np.float32(0.25), np.int64(2), np.asarray(0.75), np.asarray(3, "int8"),
              keras.ops.convert_to_tensor(0.125)]
    calls = []

    def objective(model):
        calls.append(None)
        return values[(len(calls) - 1) % len(values)]

    history = keras_lrne.evolve(classifier(), Fitness(objective, per_member=True),
                                strategy=GA(7, 1), generations=1, seed=0, verbose=0)
    assert history.history["failed_members"] == [0]
    assert history.history["fitness"] == [3.0]


def test_a_run_where_every_member_fails_stops_with_the_first_error():
    def broken(model):
        raise KeyError("missing simulator")

    with pytest.raises(RuntimeError, match=r"Every member.*member 0: KeyError") as info:
        keras_lrne.evolve(classifier(), Fitness(broken, per_member=True), strategy=GA(4, 1),
                          generations=2, seed=0, verbose=0)
    assert isinstance(info.value.__cause__, KeyError)


def other_accuracy(logits, labels):
    return accuracy(logits, labels)


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def interrupted_then(directory, first, data, generations=4):
    """Runs `first` (a Fitness) under BackupAndRestore until an interrupt after two
    generations; returns `resume(fitness)`, which continues the run on another Fitness."""
    backup = keras.callbacks.BackupAndRestore(str(directory))

    def run(fitness, extra=()):
        return keras_lrne.evolve(classifier(), fitness, strategy=GA(8, 2),
                                 generations=generations, seed=1,
                                 callbacks=[backup, *extra], verbose=0)

    with pytest.raises(KeyboardInterrupt):
        run(first, [Interrupt()])
    return run


@pytest.mark.slow
def test_a_resume_with_another_fitness_is_refused_naming_it(tmp_path):
    x, y = classification_data(n=32)
    resume = interrupted_then(tmp_path / "backup", Fitness(accuracy, data=(x, y)), (x, y))
    with pytest.raises(ValueError, match=r"other_accuracy"):
        resume(Fitness(other_accuracy, data=(x, y)))
    history = resume(Fitness(accuracy, data=(x, y)))
    assert len(history.history["fitness"]) == 4


@pytest.mark.slow
def test_a_resume_tells_lambdas_and_partials_apart_by_what_they_compute(tmp_path):
    x, _ = classification_data(n=32)
    first = Fitness(lambda o: keras.ops.mean(o[:, 0]), data=x)
    resume = interrupted_then(tmp_path / "lambdas", first, x)
    # Same qualified name (`<lambda>`), another objective.
    with pytest.raises(ValueError, match=r"task\.fn_code: checkpoint '[0-9a-f]{16} of .*<lambda>"):
        resume(Fitness(lambda o: -keras.ops.mean(o[:, 0]), data=x))
    history = resume(first)  # the same function resumes
    assert len(history.history["fitness"]) == 4

    def weighted(outputs, column=0, scale=1.0):
        return keras.ops.mean(outputs[:, column]) * scale

    resume = interrupted_then(tmp_path / "partials", Fitness(
        functools.partial(weighted, column=0, scale=np.float32(2.0)), data=x), x)
    for other in (functools.partial(weighted, column=1, scale=np.float32(2.0)),
                  functools.partial(weighted, column=0, scale=np.float32(3.0)),
                  functools.partial(weighted, 0, np.float32(2.0))):
        with pytest.raises(ValueError, match=r"task\.fn_code.*partial"):
            resume(Fitness(other, data=x))
    history = resume(Fitness(functools.partial(weighted, column=0, scale=np.float32(2.0)),
                             data=x))
    assert len(history.history["fitness"]) == 4


def test_a_name_identifies_the_objective_across_a_resume(tmp_path):
    x, _ = classification_data(n=32)
    first = Fitness(lambda o: keras.ops.mean(o[:, 0]), data=x, name="first column")
    resume = interrupted_then(tmp_path / "named", first, x)
    with pytest.raises(ValueError, match=r"task\.name: checkpoint 'first column' vs now 'col'"):
        resume(Fitness(lambda o: keras.ops.mean(o[:, 0]), data=x, name="col"))
    # The user says a rewritten function is the same objective.
    history = resume(Fitness(lambda o: keras.ops.mean(o[:, :1]), data=x,
                             name="first column"))
    assert len(history.history["fitness"]) == 4
    assert "name='first column'" in repr(first)
    with pytest.raises(ValueError, match=r"`name`.*Received: name=''"):
        Fitness(accuracy, data=x, name="")


_DIGEST = """
import functools, sys
import numpy as np
from keras import ops
from keras_lrne.tasks.fitness import function_digest

scale = np.arange(3.0)
def objective(outputs, y, power=2):
    return ops.mean(outputs[:, 0] ** power) * scale[1]
print(function_digest(objective), function_digest(lambda o, y: ops.mean(o[:, 0])),
      function_digest(functools.partial(objective, power=3)))
"""


@pytest.mark.slow
@pytest.mark.backend_independent
def test_a_function_digest_is_the_same_in_a_fresh_process():
    # This process (string hashing randomised, unless PYTHONHASHSEED says otherwise)
    # against a fresh interpreter with another fixed hash seed.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(_DIGEST, "<string>", "exec"), {"__name__": "__main__"})
    here = printed.getvalue().split()
    other = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED=other)
    result = subprocess.run([sys.executable, "-c", _DIGEST], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == here
    assert len(set(here)) == 3


def test_callbacks_read_the_loss_of_a_fitness():
    x, _ = classification_data(n=32)
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0)
    history = keras_lrne.evolve(classifier(), Fitness(lambda out: keras.ops.mean(out) * 0.0,
                                                      data=x),
                                strategy=GA(8, 2), generations=5, seed=1, callbacks=[stop],
                                verbose=0)
    assert len(history.history["fitness"]) == 2  # no improvement: stopped after patience 0


def test_bad_arguments_are_named():
    x, y = classification_data(n=8)
    with pytest.raises(ValueError, match=r"`fn`.*Received: fn=3"):
        Fitness(3, data=x)
    with pytest.raises(ValueError, match=r"no data.*per_member=False.*data=None"):
        Fitness(accuracy)
    with pytest.raises(ValueError, match=r"`data` is not used with `per_member=True`"):
        Fitness(python_accuracy, data=x, per_member=True)
    with pytest.raises(ValueError, match=r"per_member"):
        Fitness(accuracy, data=x, per_member="yes")
    with pytest.raises(ValueError, match=r"data.*NaN"):
        Fitness(accuracy, data=np.full((4, 4), np.nan, "float32"))
    with pytest.raises(ValueError, match=r"must return a scalar.*shape \(8,\)"):
        keras_lrne.evolve(classifier(), Fitness(lambda out: out[:, 0], data=x),
                          strategy=GA(4, 1), verbose=0)
    with pytest.raises(ValueError, match=r"validation_data.*Python fitness"):
        keras_lrne.evolve(classifier(), Fitness(python_accuracy, per_member=True),
                          validation_data=(x, y), strategy=GA(4, 1), verbose=0)
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"needs a built model"):
        keras_lrne.evolve(unbuilt, Fitness(python_accuracy, per_member=True),
                          strategy=GA(4, 1), verbose=0)


def test_data_that_is_not_x_or_x_y_arrays_is_refused_in_the_constructor():
    x, y = classification_data(n=32)
    with pytest.raises(ValueError, match=r"`data` and its targets have different numbers of "
                       r"samples \(32 and 10\)\. Received: data\[0\]\.shape=\(32, 4\), "
                       r"data\[1\]\.shape=\(10,\)"):
        Fitness(accuracy, data=(x, y[:10]))
    with pytest.raises(ValueError, match=r"different numbers of samples.*data\[1\]\['labels'\]"):
        Fitness(accuracy, data=(x, {"labels": y[:10]}))
    assert repr(Fitness(accuracy, data=(x, y))).endswith(
        "accuracy, data of 32 samples, per_member=False, maximize=True)")
    with pytest.raises(ValueError, match=r"a generator for `data`: generators and iterators "
                       r"are not supported.*Pass arrays"):
        Fitness(accuracy, data=(row for row in x))
    with pytest.raises(ValueError, match=r"a list_iterator for `data`"):
        Fitness(accuracy, data=(iter([x]), y))
    with pytest.raises(ValueError, match=r"a scalar for `data`.*Received: data=3\.0"):
        Fitness(accuracy, data=3.0)
    with pytest.raises(ValueError, match=r"a tuple is read as `\(x, y\)`.*has 3 elements.*"
                       r"Sample weights are not a third element.*Received: data of 3 "
                       r"elements with shapes \[\(32, 4\), \(32,\), \(32,\)\]"):
        Fitness(accuracy, data=(x, y, np.ones(32, "float32")))
    with pytest.raises(ValueError, match=r"has 1 elements"):
        Fitness(accuracy, data=(x,))


def test_sample_weights_can_go_with_the_targets():
    x, y = classification_data(n=32)
    weights = np.where(np.arange(32) < 16, 1.0, 0.0).astype("float32")

    def weighted_accuracy(logits, targets):
        hits = keras.ops.cast(keras.ops.equal(keras.ops.cast(
            keras.ops.argmax(logits, axis=-1), "int32"), targets["y"]), "float32")
        return keras.ops.sum(hits * targets["weight"]) / keras.ops.sum(targets["weight"])

    model = classifier()
    history = keras_lrne.evolve(
        model, Fitness(weighted_accuracy, data=(x, {"y": y, "weight": weights})),
        strategy=GA(8, 2), generations=2, seed=0, verbose=0)
    assert history.history["fitness"][-1] == pytest.approx(
        numpy_accuracy(model, x[:16], y[:16]), abs=1e-6)


@pytest.mark.parametrize("returned, message", [
    (lambda outputs: None, r"returned a NoneType: None"),
    (lambda outputs: "0.5", r"returned a str: '0\.5'"),
    (lambda outputs: {"fitness": keras.ops.mean(outputs)}, r"returned a dict: \{'fitness'"),
    (lambda outputs: keras.ops.all(outputs > 0), r"returned a tensor of dtype bool"),
], ids=["none", "str", "dict", "bool"])
def test_a_compiled_fitness_that_returns_no_number_is_named(returned, message):
    x, _ = classification_data(n=8)
    with pytest.raises(ValueError, match=r"The fitness function \S*fitness_test\.<lambda> must "
                       r"return .*" + message):
        keras_lrne.evolve(classifier(), Fitness(returned, data=x), strategy=GA(4, 1),
                          verbose=0)

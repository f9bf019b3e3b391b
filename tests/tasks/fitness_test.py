"""`keras_lrne.tasks.Fitness`: compiled fitness on data, Python fitness per member,
direction, logs, failures, resume signature and argument checks."""

import logging
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
        return float(np.sum(np.asarray(model.trainable_variables[-1])))

    model = classifier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = keras_lrne.evolve(model, Fitness(flaky, per_member=True),
                                    strategy=GA(8, 2), generations=2, seed=0, verbose=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    failed = [m for m in messages if "raised for 1 of 8 members" in m]
    assert len(failed) == 2  # one per generation
    assert "member 1: ZeroDivisionError: boom" in failed[0]
    assert history.history["failed_members"] == [1, 1]
    losses = np.asarray(model.evolution_state.losses) if hasattr(
        model, "evolution_state") else np.asarray(model._evolution_state.losses)
    assert np.isinf(losses[1]) and np.isinf(losses[2])
    assert np.isfinite(history.history["fitness"]).all()


def test_a_run_where_every_member_fails_stops_with_the_first_error():
    def broken(model):
        raise KeyError("missing simulator")

    with pytest.raises(RuntimeError, match=r"Every member.*member 0: KeyError") as info:
        keras_lrne.evolve(classifier(), Fitness(broken, per_member=True), strategy=GA(4, 1),
                          generations=2, seed=0, verbose=0)
    assert isinstance(info.value.__cause__, KeyError)


def other_accuracy(logits, labels):
    return accuracy(logits, labels)


def test_a_resume_with_another_fitness_is_refused_naming_it(tmp_path):
    x, y = classification_data(n=32)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))

    def run(fn, generations):
        return keras_lrne.evolve(classifier(), Fitness(fn, data=(x, y)), strategy=GA(8, 2),
                                 generations=generations, seed=1, callbacks=[backup],
                                 verbose=0)

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        keras_lrne.evolve(classifier(), Fitness(accuracy, data=(x, y)), strategy=GA(8, 2),
                          generations=4, seed=1, callbacks=[backup, Stop()], verbose=0)
    with pytest.raises(ValueError, match=r"other_accuracy"):
        run(other_accuracy, 4)
    history = run(accuracy, 4)
    assert len(history.history["fitness"]) == 4


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

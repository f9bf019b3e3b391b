import csv

import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne.strategies import GA


def classification(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")


def classifier():
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


class Evaluate(keras.callbacks.Callback):
    """Records `model.evaluate()` of the weights the model holds at each epoch's end."""

    def __init__(self, train, validation):
        super().__init__()
        self.train, self.validation, self.rows = train, validation, []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append((self.model.evaluate(*self.train, verbose=0, return_dict=True),
                          self.model.evaluate(*self.validation, verbose=0, return_dict=True)))


def evolve(model, callbacks=(), generations=3):
    return model.evolve(*classification(64, 0), validation_data=classification(32, 1),
                        strategy=GA(8, 2, mutation_rate=0.1), generations=generations,
                        seed=3, verbose=0, callbacks=list(callbacks))


def test_compiled_metrics_are_logged_as_fit_logs_them(tmp_path):
    train, validation = classification(64, 0), classification(32, 1)
    model = classifier()
    recorder = Evaluate(train, validation)
    csv_path = tmp_path / "log.csv"
    history = evolve(model, [recorder, keras.callbacks.CSVLogger(str(csv_path))])
    # fit() names: `accuracy` on the training data, `val_accuracy` on the validation data.
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain.compile(optimizer="sgd", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fitted = plain.fit(*train, validation_data=validation, epochs=1, verbose=0)
    assert set(fitted.history) <= set(history.history)
    # Of the weights the model held after each generation (the elite), on that
    # generation's data: what `model.evaluate()` reports for them.
    for (on_train, on_val), accuracy, val_accuracy, loss in zip(
            recorder.rows, history.history["accuracy"], history.history["val_accuracy"],
            history.history["loss"]):
        assert accuracy == pytest.approx(on_train["accuracy"], abs=1e-6)
        assert val_accuracy == pytest.approx(on_val["accuracy"], abs=1e-6)
        assert loss == pytest.approx(on_train["loss"], rel=1e-4)
    assert len(recorder.rows) == 3
    assert history.history["accuracy"][-1] == pytest.approx(
        model.evaluate(*train, verbose=0, return_dict=True)["accuracy"], abs=1e-6)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["accuracy"]) for r in rows] == pytest.approx(history.history["accuracy"])
    assert [float(r["val_accuracy"]) for r in rows] == pytest.approx(
        history.history["val_accuracy"])


class PowerCut(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("power cut")


def test_compiled_metrics_survive_a_resume(tmp_path):
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="power cut"):
        evolve(classifier(), [keras.callbacks.BackupAndRestore(backup), PowerCut()], 4)
    csv_path = tmp_path / "log.csv"
    resumed = evolve(classifier(), [keras.callbacks.BackupAndRestore(backup),
                                    keras.callbacks.CSVLogger(str(csv_path))], 4)
    straight = evolve(classifier(), generations=4)
    for key in ("accuracy", "val_accuracy"):
        assert resumed.history[key] == pytest.approx(straight.history[key], abs=1e-6), key
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["accuracy"]) for r in rows] == pytest.approx(straight.history["accuracy"])


def test_metrics_without_a_loss_are_refused_and_without_data_named_in_a_warning():
    x, y = classification(16, 0)

    def accuracy(logits, labels):
        predicted = keras.ops.cast(keras.ops.argmax(logits, axis=-1), "int32")
        return keras.ops.mean(keras.ops.cast(keras.ops.equal(predicted, labels), "float32"))

    def mean_output(outputs):
        return keras.ops.mean(outputs)

    class NoWork(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            raise AssertionError("the run started")

    no_loss = keras_lrne.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    no_loss.compile(metrics=["accuracy"])  # Keras' evaluate() refuses it too
    with pytest.raises(ValueError, match="without a loss") as info:
        no_loss.evolve(keras_lrne.tasks.Fitness(accuracy, data=(x, y)), strategy=GA(4, 1),
                       seed=0, verbose=0, callbacks=[NoWork()])
    assert "Received: loss=None, metrics=['accuracy']" in str(info.value)
    # Where there is nothing to compute them on (KerasHub models compile metrics by
    # default), the run goes on and says so.
    for task, reason in [
        (keras_lrne.tasks.Fitness(mean_output, data=x), "no targets"),
        (keras_lrne.tasks.Fitness(lambda model: 0.0, per_member=True), "Python fitness"),
        (keras_lrne.tasks.Environment("CartPole-v1", max_episode_steps=5), "environment"),
    ]:
        with pytest.warns(UserWarning, match=reason) as record:
            history = classifier().evolve(task, strategy=GA(4, 1), seed=0, verbose=0)
        assert "Received: metrics=['accuracy']" in str(record[0].message)
        assert not {"accuracy", "val_accuracy"} & set(history.history)

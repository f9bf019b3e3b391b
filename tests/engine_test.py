"""`keras_lrne.evolve(model, ...)`: any built Keras model (Sequential, functional with
several inputs and outputs, subclassed, plain Keras layers), through the engine."""

import re

import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne import engine, genome
from keras_lrne.strategies import GA, OpenES


def classification_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = ((x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32"))
    return x, y


def sequential(seed=1):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def two_inputs(dict_inputs, seed=1):
    keras.utils.set_random_seed(seed)
    a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
    hidden = keras.layers.Dense(8, activation="relu")(a)
    out = keras.layers.Dense(3)(keras.layers.Concatenate()([hidden, b]))
    model = keras.Model({"a": a, "b": b} if dict_inputs else [a, b], out)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def weights(model):
    return [np.asarray(v) for v in model.trainable_variables]


def test_a_plain_sequential_improves_and_a_seed_repeats():
    x, y = classification_data()
    histories, finals = [], []
    for _ in range(2):
        model = sequential()
        history = keras_lrne.evolve(model, x, y, strategy=GA(32, 4), generations=20, seed=3,
                                    verbose=0)
        assert isinstance(history, keras.callbacks.History)
        histories.append(history.history["loss"])
        finals.append(weights(model))
    assert histories[0] == histories[1]
    for a, b in zip(*finals):
        np.testing.assert_array_equal(a, b)
    assert histories[0][-1] < histories[0][0]
    # The model holds the elite: its loss as Keras computes it is the logged one.
    evaluated = model.evaluate(x, y, batch_size=len(x), verbose=0)
    assert evaluated == pytest.approx(histories[0][-1], rel=1e-4)


@pytest.mark.parametrize("dict_inputs", [False, True], ids=["list", "dict"])
def test_a_two_input_functional_model_evolves(dict_inputs):
    x, y = classification_data()
    inputs = {"a": x, "b": x[:, :2]} if dict_inputs else [x, x[:, :2]]
    losses = []
    for _ in range(2):
        model = two_inputs(dict_inputs)
        history = keras_lrne.evolve(model, inputs, y, validation_data=(inputs, y),
                                    strategy=GA(32, 4), generations=20, seed=5, verbose=0)
        losses.append(history.history["loss"])
    assert losses[0] == losses[1]
    assert losses[0][-1] < losses[0][0]
    assert history.history["val_loss"][-1] == pytest.approx(losses[0][-1], rel=1e-5)
    assert model.evaluate(inputs, y, batch_size=len(y), verbose=0) == pytest.approx(
        losses[0][-1], rel=1e-4)


def test_losses_per_output_match_keras():
    x, y = classification_data(n=64)
    targets = {"cls": y, "reg": x[:, :1] * 2.0}
    for loss, loss_weights, y_arg in [
        ({"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"},
         {"cls": 1.0, "reg": 0.5}, targets),
        ([keras.losses.SparseCategoricalCrossentropy(from_logits=True), "mse"], None,
         [targets["cls"], targets["reg"]]),
    ]:
        keras.utils.set_random_seed(2)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, activation="relu")(inputs)
        model = keras.Model(inputs, [keras.layers.Dense(3, name="cls")(hidden),
                                     keras.layers.Dense(1, name="reg")(hidden)])
        model.compile(loss=loss, loss_weights=loss_weights)
        history = keras_lrne.evolve(model, x, y_arg, strategy=GA(16, 4), generations=3,
                                    seed=1, verbose=0)
        # Keras' own weighted sum over the outputs, for the weights the model holds.
        keras_loss = model.evaluate(x, y_arg, batch_size=len(x), verbose=0, return_dict=True)
        assert keras_loss["loss"] == pytest.approx(history.history["loss"][-1], rel=1e-4)


def test_plain_keras_layers_evolve_as_full_tensors():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((6,), dtype="int32")
    embedded = keras.layers.Embedding(20, 8)(tokens)
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(embedded, embedded)
    normed = keras.layers.LayerNormalization()(attended + embedded)
    mixed = keras.layers.EinsumDense("bsd,de->bse", output_shape=(6, 8))(normed)
    image = keras.layers.Reshape((6, 8, 1))(mixed)
    conv = keras.layers.Conv2D(2, 3, padding="same")(image)
    logits = keras.layers.Dense(20, name="logits")(keras.layers.Reshape((6, 16))(conv))
    model = keras.Model(tokens, logits)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    specs = genome.collect_variable_specs(model)
    assert not any(s.factor for s in specs)
    assert [s.evolvable for s in specs if "layer_normalization" in s.path] == [False, False]
    embedding = next(s for s in specs if s.path.endswith("embeddings"))
    # Estimated by sampling the initializer (uniform in ±0.05; Glorot uniform).
    assert embedding.init_std == pytest.approx(0.05 / np.sqrt(3), rel=0.03)
    dense = next(s for s in specs if s.path.endswith("logits/kernel"))
    assert dense.init_std == pytest.approx(np.sqrt(2 / (16 + 20)), rel=0.03)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, size=(16, 6)).astype("int32")
    before = weights(model)
    history = keras_lrne.evolve(model, x, np.roll(x, -1, axis=1), strategy=GA(8, 2),
                                generations=3, seed=0, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    changed = [not np.array_equal(a, b) for a, b in zip(before, weights(model))]
    assert changed == [s.evolvable for s in specs]


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))


def test_a_subclassed_model_is_built_on_the_data_and_evolves_with_open_es():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = x[:, :1] - x[:, 1:2]
    model = Subclassed()
    model.compile(loss="mse")
    history = keras_lrne.evolve(model, x, y, strategy=OpenES(16, sigma=0.05,
                                                             learning_rate=0.05),
                                generations=15, seed=0, verbose=0)
    assert model.built
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_members_rebuild_from_the_lineage_of_a_plain_model():
    x, y = classification_data(n=32)
    model = sequential()
    keras_lrne.evolve(model, x, y, strategy=GA(8, 2), generations=2, seed=4, verbose=0)
    run = model._evolution_run
    elite = engine.rebuild_member(model, 2, 0)
    for rebuilt, held in zip(elite, run.strategy.best(model._evolution_state)):
        np.testing.assert_array_equal(rebuilt, np.asarray(held))


def test_rebuild_member_takes_the_mixins_argument_name():
    """`engine.rebuild_member(..., assign=)` as `model.rebuild_member(..., assign=)`; the
    former `assign_weights=` still works, with a DeprecationWarning."""
    x, y = classification_data(n=32)
    model = sequential()
    keras_lrne.evolve(model, x, y, strategy=GA(8, 2), generations=2, seed=4, verbose=0)
    held = [np.array(v) for v in model.get_weights()]
    first = engine.rebuild_member(model, 0, 3, assign=True)
    for rebuilt, variable in zip(first, model.trainable_variables):
        np.testing.assert_array_equal(rebuilt, np.asarray(variable))
    model.set_weights(held)
    with pytest.warns(DeprecationWarning, match="assign_weights"):
        again = engine.rebuild_member(model, 0, 3, assign_weights=True)
    for rebuilt, variable in zip(again, model.trainable_variables):
        np.testing.assert_array_equal(rebuilt, np.asarray(variable))
    with pytest.raises(TypeError, match="assign_weight"):
        engine.rebuild_member(model, 0, 3, assign_weight=True)


def test_evolve_and_the_mixin_are_the_same_code():
    x, y = classification_data(n=32)
    histories = []
    for evolve_with_function in (True, False):
        keras.utils.set_random_seed(1)
        model = keras_lrne.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        kwargs = dict(strategy=GA(8, 2), generations=3, seed=2, verbose=0)
        history = (keras_lrne.evolve(model, x, y, **kwargs) if evolve_with_function
                   else model.evolve(x, y, **kwargs))
        histories.append(history.history["loss"])
    assert histories[0] == histories[1]


def test_what_stays_unsupported_is_named():
    x, y = classification_data(n=8)
    with pytest.raises(ValueError, match=r"`model`.*keras.Model.*Received: model="):
        keras_lrne.evolve("not a model", x, y)
    with pytest.raises(ValueError, match=r"2 inputs \(\['a', 'b'\]\).*one array for `x`"):
        keras_lrne.evolve(two_inputs(True), x, y, strategy=GA(4, 1), verbose=0)
    with pytest.raises(ValueError, match=r"input shape \(x\['b'\]\).*\(2,\).*\(4,\)"):
        keras_lrne.evolve(two_inputs(True), {"a": x, "b": x}, y, strategy=GA(4, 1), verbose=0)
    with pytest.raises(ValueError, match=r"x\['b'\].*dtype <U1.*x\['b'\]\[0, 0\]='s'"):
        keras_lrne.evolve(two_inputs(True), {"a": x, "b": np.full((8, 2), "s")}, y,
                          strategy=GA(4, 1), verbose=0)
    with pytest.raises(ValueError, match=r"different numbers of samples.*x\['a'\]: 8.*: 4"):
        keras_lrne.evolve(two_inputs(True), {"a": x, "b": x[:4, :2]}, y, verbose=0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(1)(inputs), keras.layers.Dense(1)(inputs)])
    model.compile(loss=["mse", "mse", "mse"])
    with pytest.raises(ValueError, match=r"2 outputs, but received 3 losses"):
        keras_lrne.evolve(model, x, [y, y], strategy=GA(4, 1), verbose=0)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"no loss.*compile\(loss=.*Fitness"):
        keras_lrne.evolve(plain, x, y, strategy=GA(4, 1), verbose=0)


def test_extra_or_missing_input_arrays_are_refused_naming_the_inputs():
    x, y = classification_data(n=8)
    # Keras would drop the extra arrays with only a warning about the structure.
    with pytest.raises(ValueError, match=r"1 input \(sample shape \(4,\)\), but `x` holds 3 "
                       r"arrays \(the extra ones would be dropped\).*Targets go in `y`"):
        keras_lrne.evolve(sequential_with_input(), [x, x, x], y, strategy=GA(4, 1),
                          verbose=0)
    with pytest.raises(ValueError, match=r"2 inputs \('a' of sample shape \(4,\), 'b' of "
                       r"sample shape \(2,\)\), but `x` holds 3 arrays"):
        keras_lrne.evolve(two_inputs(False), [x, x[:, :2], x], y, strategy=GA(4, 1),
                          verbose=0)
    with pytest.raises(ValueError, match=r"`x` has keys that are not inputs of the model: "
                       r"\['c'\].*Received: x with keys \['a', 'b', 'c'\]"):
        keras_lrne.evolve(two_inputs(True), {"a": x, "b": x[:, :2], "c": x}, y,
                          strategy=GA(4, 1), verbose=0)
    with pytest.raises(ValueError, match=r"`x` has no arrays for the inputs \['b'\]"):
        keras_lrne.evolve(two_inputs(True), {"a": x}, y, strategy=GA(4, 1), verbose=0)
    with pytest.raises(ValueError, match=r"`validation_data` has keys that are not inputs"):
        keras_lrne.evolve(two_inputs(True), {"a": x, "b": x[:, :2]}, y,
                          validation_data=({"a": x, "b": x[:, :2], "c": x}, y),
                          strategy=GA(4, 1), verbose=0)
    # A compiled fitness's list is inputs, never (x, y): named, with the tuple to use.
    with pytest.raises(ValueError, match=r"but `data` holds 2 arrays.*use a tuple: "
                       r"`data=\(x, y\)`"):
        keras_lrne.evolve(sequential_with_input(), keras_lrne.tasks.Fitness(
            lambda outputs: keras.ops.mean(outputs), data=[x, x]), strategy=GA(4, 1),
            verbose=0)


def sequential_with_input(loss="sparse_categorical_crossentropy", units=3, seed=1):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units)])
    model.compile(loss=loss)
    return model


@pytest.mark.parametrize("loss, units, targets, expected", [
    ("sparse_categorical_crossentropy", 3, (8, 3), r"\(\) \(one integer class index"),
    (keras.losses.SparseCategoricalCrossentropy(from_logits=True), 3, (8, 2, 1),
     r"\(\) \(one integer class index"),
    ("mse", 3, (8, 5), r"\(3,\) \(the shape of the output\)"),
    ("categorical_crossentropy", 3, (8,), r"\(3,\) \(the shape of the output\)"),
], ids=["sparse", "sparse-instance", "mse", "categorical"])
def test_training_targets_of_the_wrong_shape_are_refused_before_the_run(loss, units, targets,
                                                                       expected):
    x, _ = classification_data(n=8)
    y = np.zeros(targets, "int32" if "sparse" in str(loss).lower() else "float32")
    model = sequential_with_input(loss, units)
    with pytest.raises(ValueError, match=r"The targets `y` do not match the model's output "
                       r"for the loss .*: each target must have shape " + expected +
                       r".*output having shape \(3,\) per sample\. Received: y with target "
                       r"shape " + re.escape(str(targets[1:]))):
        keras_lrne.evolve(model, x, y, strategy=GA(4, 1), verbose=0)
    # Also with validation data shaped like the model wants: the training targets are named.
    with pytest.raises(ValueError, match=r"The targets `y` do not match"):
        keras_lrne.evolve(model, x, y, validation_data=(x, np.zeros(8, y.dtype)),
                          strategy=GA(4, 1), verbose=0)


def test_targets_keras_pairs_up_and_losses_of_your_own_are_accepted():
    x, labels = classification_data(n=8)
    runs = [("mse", 1, labels.astype("float32")),  # (8,) against (8, 1)
            ("mse", 1, labels.astype("float32")[:, None]),
            ("sparse_categorical_crossentropy", 3, labels[:, None])]  # (8, 1) labels
    for loss, units, y in runs:
        keras_lrne.evolve(sequential_with_input(loss, units), x, y, strategy=GA(4, 1),
                          verbose=0)

    def first_output_error(y_true, y_pred):  # a loss of the user's: any target shape
        return keras.ops.mean(keras.ops.square(y_pred[:, 0] - y_true[:, 0]))

    keras_lrne.evolve(sequential_with_input(first_output_error), x, np.zeros((8, 7), "float32"),
                      strategy=GA(4, 1), verbose=0)


def test_a_two_input_run_resumes_to_the_uninterrupted_one(tmp_path):
    x, y = classification_data(n=32)
    inputs = {"a": x, "b": x[:, :2]}

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    def run(callbacks):
        return keras_lrne.evolve(two_inputs(True), inputs, y, validation_data=(inputs, y),
                                 strategy=GA(8, 2), generations=4, seed=6,
                                 callbacks=callbacks, verbose=0)

    straight = run([]).history
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(KeyboardInterrupt):
        run([backup, Interrupt()])
    resumed = run([backup]).history
    for key in ("loss", "val_loss"):
        assert resumed[key] == straight[key]
    other = {"a": x + 1.0, "b": x[:, :2]}
    with pytest.raises(KeyboardInterrupt):
        run([keras.callbacks.BackupAndRestore(str(tmp_path / "b2")), Interrupt()])
    with pytest.raises(ValueError, match="task"):
        keras_lrne.evolve(two_inputs(True), other, y, strategy=GA(8, 2), generations=4,
                          seed=6, verbose=0,
                          callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "b2"))])


class _PowerCut(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("power cut")


def test_set_random_seed_makes_an_unseeded_run_repeat(tmp_path):
    x, y = classification_data(32)

    def run(callbacks=(), generations=2):
        model = sequential()  # keras.utils.set_random_seed(1), as a Keras user writes
        history = keras_lrne.evolve(model, x, y, strategy=GA(6, 2), generations=generations,
                                    verbose=0, callbacks=list(callbacks))  # seed=None
        return model.lineage.seed, history.history["loss"], weights(model)

    first, second = run(), run()
    assert first[0] == second[0] and first[1] == second[1]
    for a, b in zip(first[2], second[2]):
        np.testing.assert_array_equal(a, b)
    # Without set_random_seed in between, the global generator moves on: a new seed.
    model = sequential()
    seeds = set()
    for _ in range(2):
        keras_lrne.evolve(model, x, y, strategy=GA(6, 2), generations=1, verbose=0)
        seeds.add(model.lineage.seed)
    assert len(seeds) == 2
    # A resumed run keeps its checkpoint's seed, whatever the global generator says.
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="power cut"):
        run([keras.callbacks.BackupAndRestore(backup), _PowerCut()])
    np.random.seed(12345)
    resumed = run([keras.callbacks.BackupAndRestore(backup)])
    assert resumed[0] == first[0] and resumed[1] == first[1]


def test_the_engine_calls_the_evaluator_once_and_derives_the_objective_itself():
    # An evaluator only evaluates: its losses and logs, then the held weights'
    # validation. The objective it declares (here a score to maximise) is logged by the
    # engine from `loss` (of the weights `best` returns) and `val_loss`.
    x, y = classification_data(32)
    model = keras_lrne.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.evolve(x, y, strategy=OpenES(8), generations=1, seed=0, verbose=0)
    run = model.evolution_run
    calls = []

    class Scores(keras_lrne.evaluators.Evaluator):
        objective = keras_lrne.evaluators.Objective("score", maximize=True)

        def evaluate(self, population, generation, progress=None):
            calls.append("evaluate")
            losses = np.arange(self.num_members, dtype="float64") + 1.0
            return losses, {"loss": 1.0}

        def complete(self, logs):  # the former second call: no longer made
            calls.append("complete")

        def validate(self, weights):
            calls.append("validate")
            return {"val_loss": 7.0}

    run.evaluator = Scores(run.strategy.num_members)
    state = run.strategy.init(run.evolvable, 0)
    _, logs = run.step(state, 0)
    assert calls == ["evaluate", "validate"]
    # OpenES logs the loss of the evaluated mean (the last member), not the best one.
    assert logs["loss"] == run.strategy.num_members
    assert logs["score"] == -logs["loss"] and logs["val_score"] == -7.0


class _DataWithMaximize(keras_lrne.tasks.base.ArrayTask):
    """A data task scored by the model's loss that happens to have a `maximize`
    attribute (it has no `objective`: not a `Fitness`)."""

    maximize = True


@pytest.mark.parametrize("make_task", [
    lambda x, y: _DataWithMaximize(x, y),
    lambda x, y: keras_lrne.tasks.Fitness(lambda model: 1.0, per_member=True),
    lambda x, y: keras_lrne.tasks.Fitness(lambda outputs, y: keras.ops.mean(outputs),
                                          data=(x, y), maximize=False),
])
def test_the_engine_and_ray_workers_tell_task_kinds_apart_with_one_table(monkeypatch,
                                                                         make_task):
    x, y = classification_data(32)
    model = keras_lrne.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.evolve(x, y, strategy=GA(4, 1), generations=1, seed=0, verbose=0)
    run, task = model.evolution_run, make_task(x, y)
    workers = keras_lrne.distribution.RayWorkers(num_workers=1)
    monkeypatch.setattr(workers, "start", lambda *args: None)  # no Ray needed
    local, remote = engine.make_evaluator(run, task), workers.evaluator(run, task)
    kinds = (keras_lrne.evaluators.PythonFitnessEvaluator,
             keras_lrne.evaluators.SupervisedEvaluator)
    assert [isinstance(local, k) for k in kinds] == [isinstance(remote, k) for k in kinds]
    assert local.objective == remote.objective
    assert keras_lrne.tasks.base.task_kind(task) in ("supervised", "python_fitness")

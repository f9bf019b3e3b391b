import importlib
import importlib.util
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

keras_tuner = pytest.importorskip("keras_tuner")

import keras_lrne  # noqa: E402
from keras_lrne.tasks import Environment, LanguageModeling  # noqa: E402
from keras_lrne.tuner import EvolutionHyperModel  # noqa: E402

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SEQUENCE_LENGTH = 8
VAL_LOSS = keras_tuner.Objective("val_loss", "min")
EPISODE_RETURN = keras_tuner.Objective("episode_return", "max")


@pytest.fixture(scope="module")
def lm_task():
    return LanguageModeling(tokenizer="character", sequence_length=SEQUENCE_LENGTH,
                            num_sequences=8)


def lm_builder(task):
    def build_model(hp, rank):
        model = keras_lrne.presets.language_model(
            "factorized", vocab_size=task.vocab_size, sequence_length=SEQUENCE_LENGTH,
            hidden_dim=8, num_layers=1, num_heads=1, key_dim=4, ff_dim=8, rank=rank,
            embed_rank=4,
        )
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    return build_model


def regression_data():
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    return x, x.sum(-1, keepdims=True)


def build_dense(hp, rank):
    model = keras_lrne.Sequential([
        keras.Input((3,)),
        keras_lrne.layers.FactorizedDense(4, rank=rank, activation="tanh"),
        keras.layers.Dense(1),
    ])
    model.compile(loss="mse")
    return model


class Recording(EvolutionHyperModel):
    """Keeps every trial's hyperparameter values and History."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runs = []

    def fit(self, hp, model, *args, **kwargs):
        history = super().fit(hp, model, *args, **kwargs)
        self.runs.append((dict(hp.values), history.history))
        return history


def project_files(path):
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in pathlib.Path(path).rglob("*") if p.is_file()
    }


def completed(tuner):
    return [t for t in tuner.oracle.trials.values()
            if t.status == keras_tuner.engine.trial.TrialStatus.COMPLETED]


# -- tuners ------------------------------------------------------------------------------
@pytest.mark.slow
def test_random_search_two_trials_val_loss(lm_task, tmp_path):
    hypermodel = Recording(lm_builder(lm_task), rank=[1, 2], population_size=4,
                           num_parents=1)
    tuner = keras_tuner.RandomSearch(hypermodel, objective=VAL_LOSS, max_trials=2, seed=1,
                                     directory=tmp_path, project_name="lm")
    tuner.search(lm_task, generations=2, seed=0, verbose=0)

    trials = completed(tuner)
    assert len(trials) == 2 and len(hypermodel.runs) == 2
    assert {t.hyperparameters.get("rank") for t in trials} == {1, 2}
    for values, history in hypermodel.runs:
        assert len(history["loss"]) == 2 and len(history["val_loss"]) == 2
        assert values["population_size"] == 4 and values["num_parents"] == 1
        assert 1e-3 <= values["mutation_rate"] <= 1e-1
    for trial in trials:
        history = next(h for v, h in hypermodel.runs if v == trial.hyperparameters.values)
        assert trial.score == pytest.approx(min(history["val_loss"]))

    # keras-tuner saved the elite of the best generation (SaveBestEpoch): the reloaded
    # best model scores the best val_loss on the task's validation data.
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best_model = tuner.get_best_models(1)[0]
    x_val, y_val = lm_task.validation_data()
    val_loss = best_model.evaluate(x_val, y_val, verbose=0)
    np.testing.assert_allclose(val_loss, best_trial.score, rtol=1e-4)


@pytest.mark.slow
def test_hyperband_generations_are_epochs(tmp_path):
    x, y = regression_data()
    hypermodel = Recording(build_dense, rank=[1, 2], population_size=4, num_parents=1)
    tuner = keras_tuner.Hyperband(hypermodel, objective=VAL_LOSS, max_epochs=2, factor=2,
                                  seed=1, directory=tmp_path, project_name="hb")
    tuner.search(x, y, validation_data=(x, y), seed=0, verbose=0)

    runs = hypermodel.runs
    for values, history in runs:
        assert len(history["loss"]) == values["tuner/epochs"]
    continued = [(v, h) for v, h in runs if v["tuner/initial_epoch"] > 0]
    assert continued, [v for v, _ in runs]
    tuned = ("rank", "mutation_rate", "population_size", "num_parents")
    for values, history in continued:
        parent = next(h for v, h in runs if v["tuner/epochs"] == values["tuner/initial_epoch"]
                      and all(v[k] == values[k] for k in tuned))
        # The continued trial replays its parent's run (same seed), then evolves on.
        n = values["tuner/initial_epoch"]
        assert history["loss"][:n] == parent["loss"]
        assert history["val_loss"][:n] == parent["val_loss"]


@pytest.mark.slow
def test_bayesian_optimization_two_trials(tmp_path):
    pytest.importorskip("sklearn")  # keras-tuner's BayesianOptimization needs it
    x, y = regression_data()
    hypermodel = Recording(build_dense, rank=1, population_size=[3, 4], num_parents=1)
    tuner = keras_tuner.BayesianOptimization(hypermodel, objective=VAL_LOSS, max_trials=2,
                                             seed=1, directory=tmp_path)
    tuner.search(x, y, validation_data=(x[:8], y[:8]), epochs=2, verbose=0)
    assert len(completed(tuner)) == 2
    assert all(len(h["val_loss"]) == 2 for _, h in hypermodel.runs)


def test_random_search_episode_return_on_cartpole(tmp_path):
    task = Environment("CartPole-v1", max_episode_steps=20)

    def build_model(hp, rank):
        model = keras_lrne.Sequential([
            keras.Input(task.input_shape),
            keras_lrne.layers.FactorizedDense(8, rank=rank, activation="tanh"),
            keras.layers.Dense(task.num_outputs),
        ])
        model.compile(loss="mse")  # unused by environment tasks
        return model

    hypermodel = Recording(build_model, rank=[1, 2], population_size=4, num_parents=1,
                           mutation_rate=0.1)
    tuner = keras_tuner.RandomSearch(hypermodel, objective=EPISODE_RETURN, max_trials=2,
                                     seed=1, directory=tmp_path)
    tuner.search(task, generations=2, verbose=0)
    trials = completed(tuner)
    assert len(trials) == 2
    for trial in trials:
        history = next(h for v, h in hypermodel.runs if v == trial.hyperparameters.values)
        assert trial.score == pytest.approx(max(history["episode_return"]))
    best = tuner.oracle.get_best_trials(1)[0]
    assert best.score == max(t.score for t in trials)


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, r"`rank`.*Received: rank=0"),
        ({"rank": []}, r"`rank`.*Received: rank=\[\]"),
        ({"rank": (1, -2)}, r"`rank`.*Received: rank=\(1, -2\)"),
        ({"rank": (2, 2)}, r"distinct.*Received: rank=\(2, 2\)"),
        ({"rank": 2.5}, r"`rank`.*Received: rank=2.5"),
        ({"rank": "4"}, r"`rank`.*Received: rank='4'"),
        ({"rank": True}, r"`rank`.*Received: rank=True"),
        ({"population_size": 1}, r"`population_size`.*>= 2.*Received: population_size=1"),
        ({"population_size": ()}, r"`population_size`.*Received: population_size=\(\)"),
        ({"num_parents": 0}, r"`num_parents`.*Received: num_parents=0"),
        ({"num_parents": (2, 16), "population_size": (16, 32)},
         r"smallest `population_size` \(16\).*num_parents=\(2, 16\)"),
        ({"num_parents": 8, "population_size": 4}, r"num_parents=8, population_size=4"),
        ({"mutation_rate": 0}, r"`mutation_rate`.*Received: mutation_rate=0"),
        ({"mutation_rate": -0.1}, r"`mutation_rate`.*Received: mutation_rate=-0.1"),
        ({"mutation_rate": float("nan")}, r"`mutation_rate`.*Received: mutation_rate=nan"),
        ({"mutation_rate": (0.1, 0.01)}, r"min < max.*mutation_rate=\(0.1, 0.01\)"),
        ({"mutation_rate": (0, 0.1)}, r"`mutation_rate`.*mutation_rate=\(0, 0.1\)"),
        ({"mutation_rate": (0.01, 0.02, 0.03)}, r"`mutation_rate`"),
        ({"build_model": "model"}, r"`build_model`.*Received: build_model='model'"),
    ],
)
def test_invalid_search_spaces_fail_before_any_trial(kwargs, match, tmp_path):
    # A finished project in the directory: a failing construction leaves it as it was.
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "trial.json").write_text("{}")
    before = project_files(tmp_path)
    kwargs = dict(kwargs)
    build_model = kwargs.pop("build_model", lambda hp, rank: None)
    with pytest.raises(ValueError, match=match):
        EvolutionHyperModel(build_model, **kwargs)
    assert project_files(tmp_path) == before


def test_fixed_hyperparameter_values_are_checked(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("num_parents", 4)
    hypermodel = EvolutionHyperModel(build_dense, population_size=4, num_parents=1)
    with pytest.raises(keras_tuner.errors.FatalValueError,
                       match=r"`num_parents`.*below population_size=4.*num_parents=4"):
        keras_tuner.RandomSearch(hypermodel, objective=VAL_LOSS, max_trials=1,
                                 hyperparameters=hp, directory=tmp_path)


def test_bad_search_arguments_stop_the_search_and_keep_saved_trials(tmp_path):
    x, y = regression_data()
    data = dict(x=x, y=y, validation_data=(x, y), verbose=0)

    def make_tuner(max_trials, objective=VAL_LOSS, project_name="keep"):
        hypermodel = EvolutionHyperModel(build_dense, rank=[1, 2], population_size=4,
                                         num_parents=1)
        return keras_tuner.RandomSearch(hypermodel, objective=objective,
                                        max_trials=max_trials, seed=1, directory=tmp_path,
                                        project_name=project_name)

    tuner = make_tuner(1)
    tuner.search(generations=1, **data)
    first = completed(tuner)[0]
    checkpoint = tmp_path / "keep" / f"trial_{first.trial_id}" / "checkpoint.weights.h5"
    saved = checkpoint.read_bytes()

    tuner = make_tuner(2)  # reloads the project
    with pytest.raises(keras_tuner.errors.FatalValueError, match=r"generations=2, epochs=3"):
        tuner.search(generations=2, epochs=3, **data)
    with pytest.raises(keras_tuner.errors.FatalValueError, match=r"batch_size=0"):
        tuner.search(batch_size=0, **data)  # raised by evolve()
    with pytest.raises(keras_tuner.errors.FatalValueError, match=r"episode_return"):
        make_tuner(1, EPISODE_RETURN, "wrong_objective").search(**data)
    assert checkpoint.read_bytes() == saved
    assert completed(tuner)[0].score == first.score

    tuner.search(generations=1, **data)  # the corrected search carries on
    assert len(completed(tuner)) == 2
    assert checkpoint.read_bytes() == saved


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"generations": 0}, "FatalValueError", r"`generations`.*generations=0"),
        ({"generations": 2, "epochs": 3}, "FatalValueError", r"generations=2, epochs=3"),
        ({"epochs": 2, "initial_epoch": 2}, "FatalValueError",
         r"`initial_epoch`.*initial_epoch=2"),
        ({"strategy": "ga"}, "FatalValueError", r"`strategy`.*strategy='ga'"),
        ({"seed": -1}, "FatalValueError", r"`seed`.*seed=-1"),
        ({"population_batch_size": 0}, "FatalValueError", r"population_batch_size=0"),
        ({"callbacks": [keras.callbacks.BackupAndRestore("unused")]}, "FatalValueError",
         r"BackupAndRestore"),
        ({"epoch": 2}, "FatalTypeError", r"unknown.*\['epoch'\]"),
    ],
)
def test_bad_fit_arguments_are_fatal(kwargs, error, match):
    # Fatal errors stop a search at once instead of failing every trial the same way.
    x, y = regression_data()
    hypermodel = EvolutionHyperModel(build_dense, rank=1, population_size=4, num_parents=1)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    with pytest.raises(getattr(keras_tuner.errors, error), match=match):
        hypermodel.fit(hp, model, x, y, verbose=0, **kwargs)


def test_val_loss_objective_needs_validation_data(tmp_path):
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = x.sum(-1, keepdims=True)

    def build_model(hp):
        model = keras_lrne.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(loss="mse")
        return model

    hypermodel = EvolutionHyperModel(build_model, rank=None, population_size=4,
                                     num_parents=1)
    tuner = keras_tuner.RandomSearch(hypermodel, objective=VAL_LOSS, max_trials=1,
                                     directory=tmp_path)
    with pytest.raises(keras_tuner.errors.FatalValueError, match="needs validation data"):
        tuner.search(x, y, generations=1, verbose=0)
    logs = tmp_path / "logs"
    tuner.search(x, y, validation_data=(x, y), generations=1, verbose=0,
                 callbacks=[keras.callbacks.TensorBoard(str(logs))])
    assert len(completed(tuner)) == 1
    assert list(logs.rglob("events.out.tfevents.*"))  # TensorBoard works per generation


def test_a_plain_keras_model_is_tuned_and_a_non_model_refused(tmp_path):
    def build_model(hp, rank):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(rank, "tanh"),
                                  keras.layers.Dense(1)])
        model.compile(loss="mse")
        return model

    x, y = regression_data()
    tuner = keras_tuner.RandomSearch(EvolutionHyperModel(build_model, rank=[2, 3]),
                                     objective="loss", max_trials=1, directory=tmp_path,
                                     project_name="plain")
    tuner.search(x, y, generations=2, verbose=0)
    assert len(completed(tuner)) == 1
    with pytest.raises(keras_tuner.errors.FatalTypeError, match="expected a Keras model"):
        keras_tuner.RandomSearch(EvolutionHyperModel(lambda hp, rank: "not a model"),
                                 objective=VAL_LOSS, max_trials=1, directory=tmp_path,
                                 project_name="refused")


def test_search_space_declaration():
    hypermodel = EvolutionHyperModel(lambda hp, rank: None, rank=4, mutation_rate=0.02,
                                     population_size=[8, 16], num_parents=[2, 4])
    hp = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    assert hp.values == {"rank": 4, "mutation_rate": 0.02, "population_size": 8,
                         "num_parents": 2}
    strategy = hypermodel.build_strategy(hp)
    assert isinstance(strategy, keras_lrne.strategies.GA)
    assert (strategy.population_size, strategy.num_parents, strategy.mutation_rate) == (
        8, 2, 0.02)
    space = {p.name: p for p in hp.space}
    assert isinstance(space["population_size"], keras_tuner.engine.hyperparameters.Choice)
    assert isinstance(space["rank"], keras_tuner.engine.hyperparameters.Fixed)
    default = {p.name: p for p in _declared(EvolutionHyperModel(lambda hp, rank: None))}
    assert default["mutation_rate"].sampling == "log"
    assert list(default["rank"].values) == [1, 2, 4, 8]


def _declared(hypermodel):
    hp = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    return hp.space


# -- packaging ---------------------------------------------------------------------------
def test_exported_lazily_from_the_package():
    assert keras_lrne.EvolutionHyperModel is EvolutionHyperModel
    assert "EvolutionHyperModel" not in keras_lrne.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        keras_lrne.nope  # noqa: B018


def test_missing_keras_tuner_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_tuner", None)
    monkeypatch.delitem(sys.modules, "keras_lrne.tuner")
    with pytest.raises(ImportError, match=r'pip install "keras-lrne\[tuner\]"'):
        importlib.import_module("keras_lrne.tuner")
    with pytest.raises(ImportError, match=r'pip install "keras-lrne\[tuner\]"'):
        keras_lrne.__getattr__("EvolutionHyperModel")


@pytest.mark.slow
def test_import_keras_lrne_without_keras_tuner():
    code = ("import sys; sys.modules['keras_tuner'] = None; import keras_lrne; "
            "assert 'keras_lrne.tuner' not in sys.modules; print('ok')")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


# -- example -----------------------------------------------------------------------------
@pytest.mark.slow
def test_tune_example(tmp_path):
    spec = importlib.util.spec_from_file_location("tune", EXAMPLES / "tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tuner = module.main(["--max-trials", "1", "--generations", "2", "--directory",
                         str(tmp_path), "--ranks", "1", "2", "--populations", "3",
                         "--parents", "1", "--sequence-length", "8", "--num-sequences",
                         "4", "--vocab-size", "64", "--verbose", "0"])
    assert len(completed(tuner)) == 1
    assert tuner.get_best_hyperparameters()[0].get("rank") in (1, 2)

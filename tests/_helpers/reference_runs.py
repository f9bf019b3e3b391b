"""Small recorded GA runs: the regression reference for the engine's refactors.

`python tests/_helpers/reference_runs.py` (with `KERAS_BACKEND` set) rewrites
`tests/_helpers/data/reference_<backend>.json`; `tests/reference_test.py` checks that the same
runs still give the same History, lineage and final weights.
"""

import json
import os
import sys

import keras
import numpy as np

import keras_lrne
from keras_lrne import layers as lrl
from keras_lrne.strategies import GA

#: Logged keys that measure speed, not results.
TIMING_KEYS = ("generation_seconds", "member_evals_per_second", "member_tokens_per_second",
               "frames_per_second", "policy_share", "first_stage_seconds")


def _arrays(**evolve_kwargs):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input((6,)),
                                   lrl.FactorizedDense(8, rank=2, activation="relu"),
                                   keras.layers.LayerNormalization(), keras.layers.Dense(1)])
    model.compile(loss="mse")
    history = model.evolve(x[:32], y[:32], validation_data=(x[32:], y[32:]),
                           strategy=GA(14, 3, mutation_rate=0.1), generations=6, seed=3,
                           verbose=0, population_batch_size=4, batch_size=8,
                           **evolve_kwargs)
    return model, history


def _language_model(**evolve_kwargs):
    task = keras_lrne.tasks.LanguageModeling(tokenizer="character", sequence_length=8,
                                             num_sequences=8, seed=1)
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([
        keras.Input((8,), dtype="int32"),
        lrl.FactorizedEmbedding(task.vocab_size, 8, rank=2),
        lrl.FactorizedDense(task.vocab_size, rank=2),
    ])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.evolve(task, strategy=GA(8, 2), generations=4, seed=5, verbose=0,
                           **evolve_kwargs)
    return model, history


def _environment(**evolve_kwargs):
    task = keras_lrne.tasks.Environment("CartPole-v1", max_episode_steps=40, episodes=2,
                                           reevaluate_top=4, reevaluate_episodes=1)
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input(task.input_shape),
                                   keras.layers.Dense(8, activation="tanh"),
                                   keras.layers.Dense(task.num_outputs)])
    strategy = GA(8, 2, mutation_rate=0.1)
    history = model.evolve(task, strategy=strategy, generations=4, seed=7, verbose=0,
                           **evolve_kwargs)
    return model, history


SCENARIOS = {"arrays": _arrays, "language_model": _language_model,
             "environment": _environment}


def run(name, **evolve_kwargs):
    """Runs one scenario (`evolve_kwargs`, e.g. `distribution`, go to `evolve()`);
    returns its History (without timings), lineage and weights."""
    model, history = SCENARIOS[name](**evolve_kwargs)
    lineage = model.lineage
    return {
        "history": {k: [float(v) for v in values] for k, values in history.history.items()
                    if k not in TIMING_KEYS},
        "lineage_parents": np.asarray(lineage.parents).reshape(-1).tolist(),
        "lineage_seeds": np.asarray(lineage.seeds).reshape(-1).tolist(),
        "weights": [np.asarray(w, np.float64).reshape(-1).tolist()
                    for w in model.get_weights()],
    }


def check(received, expected):
    """Asserts that a run matches a recorded one: History to float tolerance, selection
    and mutation decisions exactly, weights to float tolerance (another CPU, or another
    chunking of the population, may round differently)."""
    assert sorted(received["history"]) == sorted(expected["history"])
    for key, values in expected["history"].items():
        np.testing.assert_allclose(received["history"][key], values, rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    assert received["lineage_parents"] == expected["lineage_parents"]
    assert received["lineage_seeds"] == expected["lineage_seeds"]
    assert len(received["weights"]) == len(expected["weights"])
    for got, want in zip(received["weights"], expected["weights"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def path(backend=None):
    backend = backend or keras.config.backend()
    return os.path.join(os.path.dirname(__file__), "data", f"reference_{backend}.json")


if __name__ == "__main__":
    names = sys.argv[1:] or list(SCENARIOS)
    with open(path(), "w") as f:
        json.dump({name: run(name) for name in names}, f, indent=1)
    print("wrote", path())

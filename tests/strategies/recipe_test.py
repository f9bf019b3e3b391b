"""A member is its recipe: `PopulationRecipe`s evaluate exactly as their materialised
populations, expand to the members `rebuild_member` rebuilds, and keep memory flat in P."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne import genome
from keras_lrne import layers as lrl
from keras_lrne.strategies import GA, OpenES

TIMING_KEYS = ("generation_seconds", "member_evals_per_second", "member_tokens_per_second")


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype("float32")
    return x, (x @ rng.normal(size=(6, 2))).astype("float32")


def _model(lora=False):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="relu"),
                              lrl.FactorizedDense(8, rank=2), keras.layers.Dense(2)])
    model.compile(loss="mse")
    if lora:
        model.layers[0].enable_lora(2)
        model.layers[2].enable_lora(2)
    return model


def _expanded(strategy_class):
    """`strategy_class` whose `ask` hands the engine the expanded members (dense
    tensors, or `LowRankMembers`): the path before recipes."""

    class Expanded(strategy_class):
        def _ask(self, state):
            recipe, state = super()._ask(state)
            assert isinstance(recipe, genome.PopulationRecipe)
            return recipe.expanded(), state

    return Expanded


def _run(make, lora=False):
    x, y = _data()
    model = _model(lora)
    history = keras_lrne.evolve(model, x, y, strategy=make(), generations=4, seed=3,
                                verbose=0, population_batch_size=4, batch_size=8,
                                validation_data=(x[:8], y[:8]))
    logs = {k: v for k, v in history.history.items() if k not in TIMING_KEYS}
    return logs, [np.asarray(w) for w in model.get_weights()]


CASES = {
    "ga": (GA, {"population_size": 11, "num_parents": 3, "mutation_rate": 0.1}, False),
    "open_es": (OpenES, {"population_size": 10, "sigma": 0.05}, False),
    "open_es_rank1": (OpenES, {"population_size": 10, "sigma": 0.05,
                               "perturbation_rank": 1}, False),
    "open_es_lora": (OpenES, {"population_size": 8, "sigma": 0.1,
                              "perturbation_rank": 1}, True),
    "ga_lora": (GA, {"population_size": 9, "num_parents": 3, "mutation_rate": 0.1}, True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_recipes_evaluate_bit_identically_to_the_materialised_population(name):
    cls, kwargs, lora = CASES[name]
    recipe_logs, recipe_weights = _run(lambda: cls(**kwargs), lora)
    dense_logs, dense_weights = _run(lambda: _expanded(cls)(**kwargs), lora)
    assert recipe_logs == dense_logs
    for a, b in zip(recipe_weights, dense_weights):
        np.testing.assert_array_equal(a, b)


def test_built_in_strategies_ask_for_recipes_and_the_engine_takes_tensors_too():
    ga = GA(6, 2)
    state = ga.init([(3, 4), 4], seed=0)
    recipe, state = ga.ask(state)
    assert isinstance(recipe, genome.PopulationRecipe) and recipe.host  # initial members
    assert recipe.size == 6 and len(recipe) == 2 and recipe[0].shape == (6, 3, 4)
    state, _ = ga.tell(state, np.arange(6.0))
    recipe, _ = ga.ask(state)
    # Only the survivors are held; each member is (parent position, seed).
    assert not recipe.host and [tuple(v.shape) for v in recipe.shared] == [(2, 3, 4), (2, 4)]
    sources, seeds = recipe.records
    np.testing.assert_array_equal(sources[:2], [0, 1])
    np.testing.assert_array_equal(seeds[:2], [-1, -1])
    assert (seeds[2:] >= 0).all()
    es = OpenES(4, perturbation_rank=1)
    recipe, _ = es.ask(es.init([(5, 3)], seed=0))
    assert recipe.size == 5 and len(recipe.shared) == 1  # 4 members and the mean
    np.testing.assert_array_equal(recipe.records[1], [1, -1, 1, -1, 0])
    assert isinstance(recipe[0], genome.LowRankMembers)


def _mixin_model():
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="relu"),
                                   lrl.FactorizedDense(8, rank=2), keras.layers.Dense(2)])
    model.compile(loss="mse")
    return model


def test_expanded_chunks_equal_rebuild_member():
    x, y = _data()
    model = _mixin_model()
    keras_lrne.evolve(model, x, y, strategy=GA(10, 3, mutation_rate=0.1), generations=3,
                      seed=5, verbose=0, population_batch_size=4)
    run, state = model.evolution_run, model.evolution_state
    recipe, _ = run.strategy.ask(state)
    rows = recipe.rows([0, 4, 9])
    for i, member in enumerate((0, 4, 9)):
        for values, rebuilt in zip(rows, model.rebuild_member(3, member)):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(values)[i], rebuilt)
    es_model = _mixin_model()
    keras_lrne.evolve(es_model, x, y, strategy=OpenES(6, perturbation_rank=1), generations=2,
                      seed=5, verbose=0)
    run, state = es_model.evolution_run, es_model.evolution_state
    recipe, _ = run.strategy.ask(state)
    dense = genome.materialize(recipe.rows([3]))
    for values, rebuilt in zip(dense, es_model.rebuild_member(2, 3)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(values)[0], rebuilt)


def test_a_recipe_needs_an_expand_function_and_records():
    with pytest.raises(ValueError, match="`expand`"):
        genome.PopulationRecipe(None, [], (np.zeros(3),))
    with pytest.raises(ValueError, match="`records`"):
        genome.PopulationRecipe(lambda shared: shared, [], ())


MEMORY_SCRIPT = r"""
import json, os, sys, time, ctypes, gc
import numpy as np, keras
from keras_lrne import genome, population as pop
from keras_lrne.strategies import GA, OpenES

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

def trim():
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                          keras.layers.Dense(256, activation="relu"), keras.layers.Dense(64)])
model.compile(loss="mse")
x = np.ones((1, 64), "float32")
xt, yt = pop.to_tensors(pop.batch_data(x, 1)), pop.to_tensors(pop.batch_data(x, 1))
specs = genome.collect_variable_specs(model)
out = {}
baseline = None
for name, make in (("ga", lambda p: GA(p, 4)),
                   ("open_es_rank1", lambda p: OpenES(p, perturbation_rank=1,
                                                      mean_evaluation=False))):
    out[name] = {}
    for size in (256, int(sys.argv[1])):
        strategy = make(size)
        state = strategy.init(specs, 0)
        functions = pop.PopulationFunctions(model, specs, model.loss, chunk_size=64)
        tail = (functions.frozen_values(), functions.non_trainable_values(), xt, yt)
        if name == "ga":  # a steady-state generation: survivors and seeds
            state, _ = strategy.tell(state, np.random.default_rng(0).normal(size=size))
        if baseline is None:
            trim()
            baseline = rss("VmRSS")
        for _ in range(2):  # compile, then measure
            trim()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            population, state = strategy.ask(state)
            losses = np.asarray(functions.evaluate(population, *tail))
            del population
            state, _ = strategy.tell(state, losses)
        out[name][size] = rss("VmHWM") - baseline
print(json.dumps(out))
"""


@pytest.mark.slow
def test_generation_memory_is_flat_in_the_population_size(tmp_path):
    # A 66 k-parameter MLP: P=8,192 materialised would be 2.2 GB of members.
    large = 8192
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(large)],
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name, peaks in result.items():
        small, big = peaks["256"], peaks[str(large)]
        # Within 1.5x of a small population's (and far below the materialised 2.2 GB).
        assert big <= 1.5 * small + 64 * 2**20, (name, small, big)
        assert big < 1 * 2**30, (name, big)


def test_initial_members_drawn_together_equal_those_drawn_alone():
    def model(lora):
        keras.utils.set_random_seed(0)
        built = keras.Sequential([keras.Input((6,)),
                                  keras.layers.Dense(12, kernel_initializer="orthogonal"),
                                  lrl.FactorizedDense(8, rank=2),
                                  keras.layers.Dense(4, kernel_initializer="lecun_uniform",
                                                     bias_initializer="ones")])
        if lora:  # the adapters are the same for every member
            built.layers[0].enable_lora(2)
        return built

    for lora in (False, True):
        specs = [s for s in genome.collect_variable_specs(model(lora)) if s.evolvable]
        together = genome.initial_members(specs, 3, [0, 4, 9])
        alone = [genome.initial_member(specs, 3, m) for m in (0, 4, 9)]
        assert len(together) == len(specs) == (2 if lora else 7)
        for j, values in enumerate(together):
            np.testing.assert_array_equal(values, np.stack([a[j] for a in alone]))

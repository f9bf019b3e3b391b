"""Low rank at scale: OpenES low-rank perturbations (EGGROLL) and Keras LoRA adapters.

The population forward never materialises a member's weights, yet equals the
materialised forward; LoRA evolution changes the adapters only; runs resume and rebuild
bit-exactly.
"""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_lrne
from keras_lrne import backend as lrne_backend
from keras_lrne import genome
from keras_lrne import layers as lrl
from keras_lrne import population as pop
from keras_lrne.strategies import GA, OpenES


def _numpy(values):
    return [lrne_backend.get().to_numpy(v) for v in values]


# -- the noise ---------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 4, 16])
def test_low_rank_noise_has_mean_zero_and_variance_sigma_squared(rank):
    es = OpenES(512, sigma=0.5, perturbation_rank=rank, mean_evaluation=False)
    state = es.init([(24, 20), 7], seed=rank)
    population, _ = es.ask(state)
    assert isinstance(population[0], genome.LowRankMembers)
    assert population[0].left.shape == (512, 24, rank)
    assert population[0].right.shape == (512, 20, rank)
    assert not isinstance(population[1], genome.LowRankMembers)  # vectors: full noise
    mean = _numpy([population[0].mean])[0]
    eps = (_numpy(genome.materialize(population))[0] - mean) / 0.5  # init std 1
    assert abs(eps.mean()) < 0.02
    assert abs(eps.var() - 1.0) < 0.05
    # Antithetic twins mirror each other.
    np.testing.assert_allclose(eps[0::2], -eps[1::2], atol=1e-6)
    # A sum of r products of normals: excess kurtosis 6 / r, Gaussian as r grows.
    kurtosis = ((eps - eps.mean()) ** 4).mean() / eps.var() ** 2 - 3
    assert abs(kurtosis - 6 / rank) < 0.25 + 0.1 * 6 / rank


def test_low_rank_noise_of_a_convolution_kernel_flattens_its_leading_dimensions():
    es = OpenES(4, perturbation_rank=2)
    population, _ = es.ask(es.init([(3, 3, 2, 5)], seed=0))
    entry = population[0]
    assert entry.left.shape == (5, 18, 2) and entry.right.shape == (5, 5, 2)
    assert entry.shape == (5, 3, 3, 2, 5)
    # The mean member (last) has no perturbation.
    dense = _numpy(genome.materialize(population))[0]
    np.testing.assert_array_equal(dense[-1], _numpy([entry.mean])[0])


def test_perturbation_rank_is_validated_and_round_trips():
    with pytest.raises(ValueError, match=r"`perturbation_rank`.*Received"):
        OpenES(8, perturbation_rank=0)
    with pytest.raises(ValueError, match="`perturbation_rank`"):
        OpenES(8, perturbation_rank=1.5)
    es = OpenES(8, perturbation_rank=3)
    assert OpenES.from_config(es.get_config()).config == es.config
    assert OpenES(8).config.perturbation_rank is None


def test_a_rank_above_a_variables_smaller_side_is_capped_with_one_warning():
    es = OpenES(4, perturbation_rank=100000)
    with pytest.warns(UserWarning, match=r"perturbation_rank=100000\) is above min\(m, n\) "
                      r"of 2 variables.*variable_0 \(4, 8\): rank 4; variable_2 "
                      r"\(3, 3, 2, 5\): rank 5") as record:
        state = es.init([(4, 8), 8, (3, 3, 2, 5)], seed=0)
    assert len([w for w in record if "perturbation_rank" in str(w.message)]) == 1
    assert record[0].filename == __file__
    population, _ = es.ask(state)
    assert population[0].left.shape == (5, 4, 4) and population[0].right.shape == (5, 8, 4)
    assert population[2].left.shape == (5, 18, 5)
    # The capped noise is rank min(m, n) noise: the same members as asking for that rank.
    members = []
    for rank in (100000, 4):
        es = OpenES(4, perturbation_rank=rank)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            members.append(_numpy(genome.materialize(es.ask(es.init([(4, 8)], seed=3))[0])))
    np.testing.assert_array_equal(members[0][0], members[1][0])
    # A rank every variable allows: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OpenES(4, perturbation_rank=4).init([(4, 8), (3, 3, 2, 5)], seed=0)


def test_low_rank_open_es_descends_a_matrix_objective_without_a_model():
    target = np.random.default_rng(0).normal(size=(30, 20)).astype("float32")
    es = OpenES(32, sigma=0.1, learning_rate=0.05, perturbation_rank=1)
    state = es.init([(30, 20)], seed=0)
    first = None
    for _ in range(60):
        population, state = es.ask(state)
        dense = genome.materialize(population)[0]
        losses = _numpy([ops.mean(ops.square(dense - target), axis=(1, 2))])[0]
        state, logs = es.tell(state, losses)
        first = logs["loss"] if first is None else first
    assert logs["loss"] < 0.8 * first


# -- the unmaterialised forward ----------------------------------------------------------
def _dense_model():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="tanh"),
                             keras.layers.Dense(4)])


def _einsum_model():
    return keras.Sequential([keras.Input((6,)),
                             keras.layers.EinsumDense("ab,bcd->acd", (3, 4), bias_axes="d"),
                             keras.layers.Reshape((12,)),
                             keras.layers.EinsumDense("ab,bc->ac", 4)])


def _embedding_model():
    return keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(10, 3),
                             keras.layers.Flatten(), keras.layers.Dense(4)])


def _conv_model():
    return keras.Sequential([keras.Input((9, 9, 2)),
                             keras.layers.Conv2D(3, 3, strides=2, padding="same",
                                                 activation="relu"),
                             keras.layers.Conv2D(2, 2, padding="valid"),
                             keras.layers.Flatten(), keras.layers.Dense(4)])


def _own_layers_model(factorized=False):
    inputs = keras.Input((5,), dtype="int32")
    embedding = lrl.FactorizedEmbedding(10, 6, rank=3) if factorized else lrl.TiedEmbedding(10, 6)
    h = lrl.FactorizedDense(6, rank=2, activation="tanh")(embedding(inputs))
    outputs = keras.layers.Flatten()(embedding(h, reverse=True))
    return keras.Model(inputs, keras.layers.Dense(4)(outputs))


def _data(kind):
    rng = np.random.default_rng(1)
    y = rng.normal(size=(8, 4)).astype("float32")
    if kind in ("embedding", "own", "own_factorized"):
        return rng.integers(0, 10, (8, 5)).astype("int32"), y
    if kind == "conv":
        return rng.normal(size=(8, 9, 9, 2)).astype("float32"), y
    return rng.normal(size=(8, 6)).astype("float32"), y


MODELS = {"dense": _dense_model, "einsum": _einsum_model, "embedding": _embedding_model,
          "conv": _conv_model, "own": _own_layers_model,
          "own_factorized": lambda: _own_layers_model(factorized=True)}


def _evaluate_both_ways(model, x, y, strategy, seed=3):
    model.compile(loss="mse")
    specs = genome.collect_variable_specs(model)
    state = strategy.init(specs, seed)
    population, _ = strategy.ask(state)
    functions = pop.PopulationFunctions(model, specs, "mse", chunk_size=4)
    data = (functions.frozen_values(), functions.non_trainable_values(),
            pop.batch_data(x, len(x)), pop.batch_data(y, len(y)))
    low = _numpy([functions.evaluate(population, *data)])[0]
    dense = _numpy([functions.evaluate(genome.materialize(population), *data)])[0]
    return functions, population, low, dense


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_the_unmaterialised_forward_equals_the_materialised_one(kind):
    keras.utils.set_random_seed(0)
    x, y = _data(kind)
    functions, population, low, dense = _evaluate_both_ways(
        MODELS[kind](), x, y, OpenES(6, sigma=0.5, perturbation_rank=3))
    np.testing.assert_allclose(low, dense, rtol=1e-5, atol=1e-5)
    assert len(set(np.round(low, 4))) > 3  # members differ
    # Every 2-D+ weight of these layers is perturbed without materialising it.
    low_rank = [isinstance(e, genome.LowRankMembers) for e in population]
    assert functions._unmaterialized == low_rank


@pytest.mark.slow
def test_layers_without_support_get_materialised_members():
    keras.utils.set_random_seed(0)
    x, y = _data("dense")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Reshape((6, 1)),
                              keras.layers.Conv1D(3, 2), keras.layers.Flatten(),
                              keras.layers.Dense(4)])
    functions, _, low, dense = _evaluate_both_ways(
        model, x, y, OpenES(4, sigma=0.5, perturbation_rank=2))
    np.testing.assert_allclose(low, dense, rtol=1e-5, atol=1e-5)
    assert functions._unmaterialized == [False, False, True, False]  # Conv1D: not


def test_low_rank_open_es_evolves_a_plain_keras_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, :1] * 2 - x[:, 1:2]).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(loss="mse")
    history = keras_lrne.evolve(
        model, x, y, strategy=OpenES(16, sigma=0.1, learning_rate=0.05, perturbation_rank=1),
        generations=30, seed=1, verbose=0)
    assert history.history["loss"][-1] < 0.6 * history.history["loss"][0]


def test_low_rank_open_es_rebuilds_means_and_members_from_its_lineage():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = x @ rng.normal(size=(6, 1)).astype("float32")

    def make():
        keras.utils.set_random_seed(0)
        model = keras_lrne.Sequential([keras.Input((6,)),
                                       lrl.FactorizedDense(8, rank=2, activation="relu"),
                                       keras.layers.Dense(1)])
        model.compile(loss="mse")
        return model

    model = make()
    es = OpenES(8, sigma=0.1, perturbation_rank=2, mean_evaluation=False)
    model.evolve(x, y, strategy=es, generations=4, seed=5, verbose=0)
    state = model.evolution_state
    for a, b in zip(model.rebuild_member(4, None), state.mean):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))
    # Without mean evaluation the model holds the best member of the last generation.
    best = int(np.argmin(state.losses))
    for a, b in zip(model.rebuild_member(3, best), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    copy = keras_lrne.Lineage.from_bytes(model.lineage.to_bytes())
    for a, b in zip(copy.rebuild_member(make(), 4, None, assign=False), state.mean):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))


# -- Keras LoRA adapters -----------------------------------------------------------------
def _lora_model(rank=2):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(loss="mse")
    model.fit(*_data("dense"), epochs=2, verbose=0)  # "pretrained"
    for layer in model.layers:
        layer.enable_lora(rank)
    return model


def _base_values(model):
    return {v.path: keras.ops.convert_to_numpy(v.value) for v in model.variables
            if "lora_" not in v.path}


def test_only_lora_factors_evolve_and_start_at_the_pretrained_model():
    model = _lora_model()
    specs = genome.collect_variable_specs(model)
    evolvable = [s.path.rsplit("/", 1)[-1] for s in specs if s.evolvable]
    assert evolvable == ["lora_kernel_a", "lora_kernel_b"] * 2
    assert all(s.lora for s in specs if s.evolvable)
    first, other = genome.initial_member(specs, 7, 0), genome.initial_member(specs, 7, 5)
    for a, b in zip(first, other):
        np.testing.assert_array_equal(a, b)  # every member starts from the same adapter
    assert not first[1].any() and not first[3].any()  # `_b` factors are zero


@pytest.mark.parametrize("make", [lambda: GA(6, 2, mutation_rate=0.05),
                                  lambda: OpenES(6, sigma=0.1, learning_rate=0.1)],
                         ids=["ga", "open_es"])
def test_lora_evolution_changes_the_adapters_only(make):
    x, y = _data("dense")
    model = _lora_model()
    pretrained = float(model.evaluate(x, y, verbose=0))
    base = _base_values(model)
    strategy = make()
    history = keras_lrne.evolve(model, x, y, strategy=strategy, generations=4, seed=0,
                                verbose=0)
    after = _base_values(model)
    assert base.keys() == after.keys()
    for path, value in base.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    lora = [keras.ops.convert_to_numpy(v.value) for v in model.variables
            if "lora_kernel_b" in v.path]
    assert any(np.abs(b).sum() > 0 for b in lora)
    if isinstance(strategy, GA):
        # Population 0 is P copies of the pretrained model.
        np.testing.assert_allclose(history.history["loss"][0], pretrained, rtol=1e-5)
    # The evolved model's own (merged) Keras forward gives the logged loss.
    np.testing.assert_allclose(float(model.evaluate(x, y, verbose=0)),
                               history.history["loss"][-1], rtol=1e-4)


def test_lora_member_calls_run_unmerged_and_equal_keras_merged_forward():
    x, y = _data("dense")
    model = _lora_model(rank=3)
    specs = genome.collect_variable_specs(model)
    ga = GA(5, 1, mutation_rate=2.0)
    state = ga.init(specs, 0)
    population, state = ga.ask(state)
    state, _ = ga.tell(state, np.arange(5.0))
    population, state = ga.ask(state)  # mutated adapters, B no longer zero
    functions = pop.PopulationFunctions(model, specs, "mse", chunk_size=5)
    assert len(functions._lora_layers) == 2
    losses = _numpy([functions.evaluate(
        population, functions.frozen_values(), functions.non_trainable_values(),
        pop.batch_data(x, 8), pop.batch_data(y, 8))])[0]
    evolvable = [v for v, s in zip(model.trainable_variables, specs) if s.evolvable]
    for i in range(5):
        for variable, values in zip(evolvable, _numpy(population)):
            variable.assign(values[i])
        np.testing.assert_allclose(losses[i], float(model.evaluate(x, y, verbose=0)),
                                   rtol=1e-5)
    assert len(set(np.round(losses, 5))) > 2


def test_lora_model_saves_in_keras_layout_and_plain_keras_loads_it(tmp_path):
    x, y = _data("dense")
    model = _lora_model()
    keras_lrne.evolve(model, x, y, strategy=GA(4, 1, mutation_rate=0.5), generations=2,
                      seed=0, verbose=0)
    path = str(tmp_path / "lora.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[0].lora_enabled
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)
    merged = keras_lrne.merge_lora(model)
    assert not any(getattr(layer, "lora_enabled", False) for layer in merged.layers)
    assert len(merged.weights) == 4
    np.testing.assert_allclose(merged.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_member", [False, True], ids=["compiled", "python"])
def test_low_rank_members_reach_fitness_functions_and_environments(per_member):
    x, y = _data("dense")
    keras.utils.set_random_seed(0)
    model = _dense_model()
    strategy = OpenES(4, sigma=0.2, perturbation_rank=1)
    if per_member:
        def fitness(member):
            return -float(np.mean((member.predict(x, verbose=0) - y) ** 2))

        task = keras_lrne.tasks.Fitness(fitness, per_member=True)
    else:
        task = keras_lrne.tasks.Fitness(
            lambda outputs, targets: -ops.mean(ops.square(outputs - targets)), data=(x, y))
    history = keras_lrne.evolve(model, task, strategy=strategy, generations=2, seed=0,
                                verbose=0)
    assert np.isfinite(history.history["fitness"]).all()


def test_low_rank_open_es_plays_an_environment():
    task = keras_lrne.tasks.Environment("CartPole-v1", max_episode_steps=20, episodes=1)
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input(task.input_shape), keras.layers.Dense(4),
                                   keras.layers.Dense(task.num_outputs)])
    history = model.evolve(task, strategy=OpenES(4, perturbation_rank=1), generations=2,
                           seed=0, verbose=0)
    assert np.isfinite(history.history["episode_return"]).all()


@pytest.mark.parametrize("rank", [1, 3])
def test_the_low_rank_update_sums_the_weighted_products_of_the_factors(rank):
    from keras_lrne import backend as lrne_backend

    rng = np.random.default_rng(rank)
    weights = rng.normal(size=(6,)).astype("float32")
    left = rng.normal(size=(6, 5, rank)).astype("float32")
    right = rng.normal(size=(6, 4, rank)).astype("float32")
    expected = sum(w * a @ b.T for w, a, b in zip(weights, left, right))
    got = lrne_backend.get().weighted_outer_sum(*(keras.ops.convert_to_tensor(v)
                                                  for v in (weights, left, right)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-5,
                               atol=1e-5)

"""The ask/tell contract on its own (no model), OpenES end to end, and resumes."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_lrne
from keras_lrne import backend as lrne_backend
from keras_lrne import layers as lrl
from keras_lrne.strategies import GA, OpenES
from keras_lrne.tasks import Environment

SPHERE_DIM = 1000


def sphere(population):
    """Loss of every member: squared distance to 0.5 in every coordinate."""
    return lrne_backend.get().to_numpy(ops.sum(ops.square(population[0] - 0.5), axis=1))


def optimise(strategy, generations, seed=0, loss_fn=sphere):
    state = strategy.init([(SPHERE_DIM,)], seed=seed)
    first = None
    for _ in range(generations):
        population, state = strategy.ask(state)
        state, logs = strategy.tell(state, loss_fn(population))
        first = logs["loss"] if first is None else first
    return first, logs["loss"], state


@pytest.mark.parametrize("strategy, factor", [
    (lambda: OpenES(32, sigma=0.1, learning_rate=0.05), 0.5),
    (lambda: GA(32, 4, mutation_rate=0.1), 0.9),
])
def test_strategies_descend_a_1000_dimensional_sphere_without_a_model(strategy, factor):
    first, last, state = optimise(strategy(), 100)
    assert last < factor * first
    assert state.generation == 100 and state.best_loss <= last


def test_ask_tell_is_deterministic_for_a_seed():
    for make in (lambda: OpenES(8), lambda: GA(8, 2)):
        a = optimise(make(), 5, seed=3)[1]
        b = optimise(make(), 5, seed=3)[1]
        c = optimise(make(), 5, seed=4)[1]
        assert a == b != c


def test_mutation_changes_every_member_but_survivors():
    ga = GA(6, 2, mutation_rate=0.1)
    state = ga.init([(50,)], seed=0)
    population, state = ga.ask(state)
    state, _ = ga.tell(state, sphere(population))
    before = keras.ops.convert_to_numpy(population[0])
    after = keras.ops.convert_to_numpy(ga.ask(state)[0][0])
    np.testing.assert_array_equal(after[:2], before[state.parents[:2]])
    for i in range(2, 6):
        assert not np.allclose(after[i], before[state.parents[i]])


@pytest.mark.parametrize("make", [lambda: OpenES(8, mean_evaluation=False), lambda: GA(8, 2)])
def test_nan_and_inf_losses_never_become_the_best(make):
    strategy = make()
    state = strategy.init([(10,)], seed=0)
    population, state = strategy.ask(state)
    losses = np.full(strategy.num_members, 5.0)
    losses[:3] = [np.nan, np.inf, -np.inf]
    losses[6] = 1.0
    state, logs = strategy.tell(state, losses)
    assert logs["loss"] == 1.0 and state.best_loss == 1.0
    best = [keras.ops.convert_to_numpy(v) for v in strategy.best(state)]
    np.testing.assert_array_equal(best[0], keras.ops.convert_to_numpy(population[0][6]))
    _, logs = strategy.tell(state, np.full(strategy.num_members, np.nan))
    assert logs["loss"] == np.inf


def test_tell_checks_the_number_of_losses():
    es = OpenES(8)
    state = es.init([(4,)], seed=0)
    with pytest.raises(ValueError, match=r"shape \(9,\)"):
        es.tell(state, np.zeros(8))


@pytest.mark.parametrize("kwargs, argument", [
    ({"population_size": 7}, "population_size"),
    ({"population_size": 1}, "population_size"),
    ({"population_size": 8, "sigma": 0}, "sigma"),
    ({"population_size": 8, "sigma": float("nan")}, "sigma"),
    ({"population_size": 8, "learning_rate": -1.0}, "learning_rate"),
    ({"population_size": 8, "antithetic": "yes"}, "antithetic"),
    ({"population_size": 8, "fitness_shaping": "rank"}, "fitness_shaping"),
    ({"population_size": 8, "optimizer": "nope"}, "optimizer"),
    ({"population_size": 8, "optimizer": 3}, "optimizer"),
    ({"population_size": 8, "weight_decay": -0.1}, "weight_decay"),
    ({"population_size": 8, "mean_evaluation": 1}, "mean_evaluation"),
])
def test_open_es_bad_arguments_name_the_argument_and_value(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`") as info:
        OpenES(**kwargs)
    assert "Received:" in str(info.value)


def test_open_es_config_round_trips_with_an_optimizer_instance():
    es = OpenES(8, optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), weight_decay=0.01)
    again = OpenES.from_config(es.get_config())
    assert again.get_config() == es.get_config()
    first, last, _ = optimise(again, 30)
    assert last < first
    assert OpenES(9, antithetic=False).num_members == 10


def regression(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x @ rng.normal(size=(6, 1))).astype("float32")


def regression_model():
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input((6,)),
                                   lrl.FactorizedDense(16, rank=2, activation="relu"),
                                   keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model


def test_open_es_evolves_a_factorized_model_and_rebuilds_its_means():
    x, y = regression()
    model = regression_model()
    history = model.evolve(x, y, strategy=OpenES(16, sigma=0.1, learning_rate=0.05),
                           generations=30, seed=0, verbose=0)
    logs = history.history
    assert logs["loss"][-1] < 0.2 * logs["loss"][0]
    assert {"best_member_loss", "mean_loss"} <= set(logs)
    state = model.evolution_state
    # The model holds the mean that was evaluated last (its loss is `loss`).
    held = [v.numpy() if hasattr(v, "numpy") else np.asarray(v)
            for v in model.trainable_variables]
    for a, b in zip(held, state.elite):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))
    # Any generation's mean is rebuilt bit-exactly from the seed and the lineage alone.
    for generation, mean in ((30, state.mean), (29, state.elite)):
        for a, b in zip(model.rebuild_member(generation, None), mean):
            np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))
    copy = keras_lrne.Lineage.from_bytes(model.lineage.to_bytes())
    for a, b in zip(copy.rebuild_member(regression_model(), 30, None, assign=False),
                    state.mean):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))


@pytest.mark.slow
def test_open_es_beats_its_initial_return_on_cartpole():
    task = Environment("CartPole-v1", max_episode_steps=200, episodes=2)
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input(task.input_shape),
                                   keras.layers.Dense(8, activation="tanh"),
                                   keras.layers.Dense(task.num_outputs)])
    history = model.evolve(task, strategy=OpenES(16, sigma=0.3, learning_rate=0.1),
                           generations=20, seed=0, verbose=0)
    returns = history.history["episode_return"]
    # Measured (mean of the last 5 vs the first 3): 96.7 vs 9.5 (TF), 77.6 vs 28.3 (JAX).
    assert np.mean(returns[-5:]) > 1.5 * np.mean(returns[:3]) + 10
    np.testing.assert_allclose(returns, -np.asarray(history.history["loss"]))


class Interrupt(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise RuntimeError("power cut")


@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda: OpenES(8, sigma=0.1),
    lambda: OpenES(6, antithetic=False, mean_evaluation=False, optimizer="sgd"),
    lambda: OpenES(8, sigma=0.1, perturbation_rank=1),
])
def test_open_es_resumes_bit_exactly(tmp_path, make):
    x, y = regression(32)

    def go(callbacks):
        model = regression_model()
        history = model.evolve(x, y, strategy=make(), generations=5, seed=2, verbose=0,
                               callbacks=callbacks)
        return model, history

    backup = str(tmp_path / "b")
    with pytest.raises(RuntimeError, match="power cut"):
        go([keras.callbacks.BackupAndRestore(backup), Interrupt(2)])
    resumed, resumed_history = go([keras.callbacks.BackupAndRestore(backup)])
    straight, straight_history = go([])
    assert resumed_history.epoch == [0, 1, 2, 3, 4]
    for key in ("loss", "mean_loss", "best_member_loss"):
        assert resumed_history.history[key] == straight_history.history[key], key
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(resumed.evolution_state.optimizer_variables,
                    straight.evolution_state.optimizer_variables):
        np.testing.assert_array_equal(a, b)


def test_progress_advances_within_a_generation():
    steps = []

    class Batches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append((batch, dict(logs)))

    x, y = regression(32)
    model = regression_model()
    model.evolve(x, y, strategy=GA(12, 3), generations=2, seed=0, verbose=0,
                 population_batch_size=3, callbacks=[Batches()])
    assert model.evolution_run.evaluator.steps == 4
    assert [b for b, _ in steps] == [0, 1, 2, 3] * 2
    assert all("loss" in logs for _, logs in steps)
    steps.clear()
    task = Environment("CartPole-v1", max_episode_steps=20, episodes=2)
    policy = keras_lrne.Sequential([keras.Input(task.input_shape), keras.layers.Dense(2)])
    policy.evolve(task, strategy=GA(4, 1), generations=1, seed=0, verbose=0,
                  callbacks=[Batches()])
    assert [b for b, _ in steps] == list(range(8))  # one step per member-episode
    assert steps[-1][1]["env_steps"] > 0


def test_centered_ranks_share_ties_so_failed_members_give_no_gradient():
    from keras_lrne.strategies.open_es import shape_fitness

    np.testing.assert_array_equal(shape_fitness([np.nan] * 4), np.zeros(4))
    weights = shape_fitness([1.0, 2.0, 2.0, np.inf])
    np.testing.assert_allclose(weights, [-0.5, 0.0, 0.0, 0.5])
    assert np.isfinite(shape_fitness([1e300, 1.0], "none")).all()


def test_two_stage_selection_needs_a_truncation_strategy():
    task = Environment("CartPole-v1", max_episode_steps=10, reevaluate_top=2,
                       reevaluate_episodes=1)
    model = keras_lrne.Sequential([keras.Input(task.input_shape), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="reevaluate_top=2"):
        model.evolve(task, strategy=OpenES(4), generations=1, verbose=0)


def test_a_ga_run_has_no_mean_to_rebuild():
    x, y = regression(16)
    model = regression_model()
    model.evolve(x, y, strategy=GA(4, 1), generations=1, seed=0, verbose=0)
    with pytest.raises(ValueError, match="member=None"):
        model.rebuild_member(1, None)


def _run_losses(strategy, state, generations, loss_fn):
    """Runs `generations` of `strategy` from `state`: the logged losses and best."""
    losses = []
    for _ in range(generations):
        population, state = strategy.ask(state)
        state, logs = strategy.tell(state, loss_fn(population))
        losses.append(logs["loss"])
    return losses, [keras.ops.convert_to_numpy(v) for v in strategy.best(state)]


def _distance_loss(count):
    """The loss of members of `count` variables: squared distance to 0.5."""
    def loss(population):
        dense = keras_lrne.genome.materialize(population)
        total = sum(ops.sum(ops.square(ops.reshape(dense[j], (-1, size)) - 0.5), axis=1)
                    for j, size in enumerate(count))
        return lrne_backend.get().to_numpy(total)
    return loss


@pytest.mark.parametrize("make", [
    lambda: GA(8, 2, mutation_rate=0.1),
    lambda: OpenES(8, sigma=0.1, learning_rate=0.05),
    lambda: OpenES(8, sigma=0.1, perturbation_rank=1, mean_evaluation=False),
])
def test_one_strategy_object_serves_two_interleaved_runs(make):
    # The instance holds configuration only: two runs with different variables,
    # interleaved generation by generation on one object, give what two objects give.
    shared = make()
    a, b = shared.init([(6,), (3, 4)], seed=1), shared.init([(5, 2)], seed=2)
    runs = {"a": ([], a), "b": ([], b)}
    sizes = {"a": (6, 12), "b": (10,)}
    for _ in range(4):
        for name in ("a", "b"):
            losses, state = runs[name]
            population, state = shared.ask(state)
            loss = _distance_loss(sizes[name])
            state, logs = shared.tell(state, loss(population))
            runs[name] = (losses + [logs["loss"]], state)
    for name, specs, seed in (("a", [(6,), (3, 4)], 1), ("b", [(5, 2)], 2)):
        alone = make()
        expected, expected_best = _run_losses(alone, alone.init(specs, seed=seed), 4,
                                              _distance_loss(sizes[name]))
        losses, state = runs[name]
        assert losses == expected
        for got, want in zip(shared.best(state), expected_best):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), want)


@pytest.mark.parametrize("make", [lambda: GA(8, 2), lambda: OpenES(8)])
def test_a_fresh_strategy_object_asks_and_tells_on_a_state_it_did_not_init(make):
    # Nothing of a run lives on the object that called `init`: another object of the
    # same configuration continues the run (what a resumed or forked run does).
    first = make()
    state = first.init([(7,)], seed=5)
    population, state = first.ask(state)
    state, _ = first.tell(state, sphere(population))
    expected, expected_best = _run_losses(first, state, 3, sphere)
    other = make()
    losses, best = _run_losses(other, state, 3, sphere)
    assert losses == expected
    np.testing.assert_array_equal(best[0], expected_best[0])


def test_two_stage_selection_asks_the_strategy_whether_it_selects_by_truncation():
    # A strategy declares truncation selection (`selects_by_truncation`); having an
    # attribute named `num_parents` is not enough.
    assert GA(4, 1).selects_by_truncation and not OpenES(4).selects_by_truncation

    class NamedParents(OpenES):
        num_parents = 2

    task = Environment("CartPole-v1", max_episode_steps=10, reevaluate_top=2,
                       reevaluate_episodes=1)
    model = keras_lrne.Sequential([keras.Input(task.input_shape), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="selects_by_truncation"):
        model.evolve(task, strategy=NamedParents(4), generations=1, verbose=0)

"""`CMAES` and `SepCMAES`: convergence on seeded benchmark functions (thresholds from
pycma), arguments, the full-covariance limit, NaN losses, `evolve()` and resumes.

The convergence thresholds come from pycma 4.5.0 (`cma.CMAEvolutionStrategy`, Hansen's
reference; `CMA_diagonal=True` for the separable variant) started from the same mean,
step size and population size (`benchmarks/strategies_bbob.py` runs the comparison
over 10 seeds). Measured on seeds 0, 1, 2, evaluations of the population only
(`mean_evaluation=False`), keras-lrne / pycma:

- CMAES, 10-D Sphere to 1e-8 (lambda 10, sigma 0.5): 1460 / 1350, 1370 / 1380,
  1410 / 1410.
- CMAES, 10-D Rosenbrock to 1e-8 (lambda 10, sigma 0.5): 5170 / 5280, 6270 / 4770,
  5830 / 3940.
- CMAES, 10-D Rastrigin to 5 (lambda 100, sigma 2): 6700 / 8600, 10000 / 6600,
  7700 / 6800.
- SepCMAES, 10-D Sphere to 1e-8: 1180 / 970, 1230 / 1150, 1190 / 1150.
- SepCMAES, 10-D Rosenbrock to 1e-3: 33320 / not in 40000 (0.0013), 33220 / not
  (0.0018), 33810 / 38150; to 1 (the fast tier's target) within 10000 below.
- SepCMAES, 10-D Rastrigin to 5 (lambda 100, sigma 2): 3000 / 5000, 4400 / 3400,
  3700 / 5200.
- SepCMAES, 1,000-D Sphere to 1 (lambda 24, sigma 0.5, from f about 1,250): 26784 /
  16728, 26760 / 17016, 26736 / 16824 (pycma's diagonal mode adapts the step size by
  two-point adaptation at this dimension; with CSA, as sep-CMA-ES, its median to 1e-6
  over 10 seeds is 81,552 evaluations against keras-lrne's 79,032: see
  benchmarks/README.md).
"""

import math

import keras
import numpy as np
import pytest

import keras_lrne
from keras_lrne import genome
from keras_lrne.strategies import CMAES, SepCMAES
from keras_lrne.strategies.cma_es import MAX_WEIGHTS


def sphere(x):
    return (x ** 2).sum(axis=1)


def rosenbrock(x):
    return (100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2).sum(axis=1)


def rastrigin(x):
    return 10 * x.shape[1] + (x ** 2 - 10 * np.cos(2 * np.pi * x)).sum(axis=1)


def evaluations_to_target(strategy, fn, n, target, budget, seed=0):
    """Evaluations (population members) until a member reaches `target`, or None."""
    state = strategy.init([(n,)], seed)
    evaluations = 0
    while evaluations < budget:
        population, state = strategy.ask(state)
        losses = fn(np.asarray(keras.ops.convert_to_numpy(population[0]), np.float64))
        evaluations += strategy.population_size
        if losses.min() <= target:
            return evaluations
        state, _ = strategy.tell(state, losses)
    return None


# (strategy, function, dimension, population, sigma, target, budget): budgets about 1.5x
# the evaluations measured on the seed (see the module docstring).
CONVERGENCE = [
    (CMAES, sphere, 10, 10, 0.5, 1e-8, 2_200),
    (CMAES, rosenbrock, 10, 10, 0.5, 1e-8, 9_000),
    (CMAES, rastrigin, 10, 100, 2.0, 5.0, 15_000),
    (SepCMAES, sphere, 10, 10, 0.5, 1e-8, 1_800),
    (SepCMAES, rosenbrock, 10, 10, 0.5, 1.0, 10_000),
    (SepCMAES, rastrigin, 10, 100, 2.0, 5.0, 7_000),
]


@pytest.mark.parametrize(
    "cls, fn, n, population, sigma, target, budget", CONVERGENCE,
    ids=[f"{c[0].__name__}-{c[1].__name__}" for c in CONVERGENCE])
def test_reaches_the_target_within_the_budget(cls, fn, n, population, sigma, target, budget):
    strategy = cls(population_size=population, sigma=sigma, mean_evaluation=False)
    used = evaluations_to_target(strategy, fn, n, target, budget)
    assert used is not None, f"{cls.__name__} missed {target} on {fn.__name__} in {budget}"


def test_sep_cma_es_descends_a_1000_dimensional_sphere():
    # From f about 1,250 to 10: keras-lrne reaches f = 1 in about 26,800 evaluations
    # (pycma's diagonal mode, with two-point step-size adaptation: about 16,900).
    strategy = SepCMAES(sigma=0.5, mean_evaluation=False)
    assert evaluations_to_target(strategy, sphere, 1000, 10.0, 20_000) is not None
    assert strategy.population_size == 4 + math.floor(3 * math.log(1000)) == 24


def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    def run(seed):
        strategy = CMAES(population_size=6, sigma=0.3)
        state = strategy.init([(3, 2), (4,)], seed)
        for _ in range(5):
            population, state = strategy.ask(state)
            x = np.concatenate([keras.ops.convert_to_numpy(p).reshape(7, -1)
                                for p in population], axis=1)
            state, _ = strategy.tell(state, sphere(x))
        return np.concatenate([np.ravel(keras.ops.convert_to_numpy(w))
                               for w in strategy.best(state)])

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


@pytest.mark.parametrize("cls", [CMAES, SepCMAES])
def test_mean_starts_at_the_given_weights_or_the_first_initial_member(cls):
    specs = [(2, 3), (3,)]
    strategy = cls(population_size=4)
    state = strategy.init(specs, seed=5)
    expected = genome.initial_member(keras_lrne.strategies.base.as_specs(specs), 5, 0)
    for got, want in zip(strategy.best(state), expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-6)
    population, state = strategy.ask(state)
    assert [tuple(p.shape) for p in population] == [(5, 2, 3), (5, 3)]
    # The mean is evaluated as the last member, and is what `best` returns after.
    for member, want in zip(population, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(member[-1]), want, rtol=1e-6)
    state, logs = strategy.tell(state, np.array([4.0, 3.0, 2.0, 1.0, 7.0]))
    assert logs["loss"] == 7.0 and logs["best_member_loss"] == 1.0
    for got, want in zip(strategy.best(state), expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-6)
    # Given starting weights (what `evolve()` passes: the model's), the mean is those.
    start = [np.full((2, 3), 0.5, "float32"), np.arange(3, dtype="float32")]
    state = strategy.init(specs, seed=5, start=start)
    for got, want in zip(strategy.best(state), start):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"`start`.*shapes"):
        strategy.init(specs, seed=5, start=start[:1])


@pytest.mark.parametrize("cls", [CMAES, SepCMAES])
def test_non_finite_losses_rank_last_and_never_become_best(cls):
    strategy = cls(population_size=4, mean_evaluation=True)
    state = strategy.init([(3,)], seed=0)
    population, state = strategy.ask(state)
    members = keras.ops.convert_to_numpy(population[0]).astype(np.float64)
    # Only member 2 has a finite loss: the new mean is it (no weight on the others).
    state, logs = strategy.tell(state, np.array([np.nan, np.inf, 5.0, -np.inf, np.nan]))
    np.testing.assert_allclose(state.mean, members[2], rtol=1e-6)
    # The mean's loss was NaN: it is logged as inf and never becomes the best.
    assert logs["loss"] == math.inf and state.best_loss == math.inf
    # No finite loss at all: nothing moves.
    before = state
    _, state = strategy.ask(state)
    state, logs = strategy.tell(state, np.full(5, np.nan))
    np.testing.assert_array_equal(state.mean, before.mean)
    assert state.sigma == before.sigma and state.best_loss == math.inf
    _, state = strategy.ask(state)
    state, logs = strategy.tell(state, np.array([1.0, 2.0, np.nan, 3.0, 0.5]))
    assert logs["loss"] == 0.5 and state.best_loss == 0.5


def test_the_default_population_is_hansens_and_resolved_by_init():
    strategy = CMAES()
    with pytest.raises(ValueError, match="population_size=None"):
        _ = strategy.num_members
    strategy.init([(10,)], seed=0)
    assert strategy.population_size == 10 and strategy.num_members == 11
    assert CMAES.default_population_size(100) == 4 + math.floor(3 * math.log(100)) == 17


@pytest.mark.parametrize("cls", [CMAES, SepCMAES])
@pytest.mark.parametrize("kwargs, name", [
    ({"population_size": 1}, "population_size"),
    ({"population_size": 4.0}, "population_size"),
    ({"sigma": 0}, "sigma"),
    ({"sigma": -0.1}, "sigma"),
    ({"sigma": float("nan")}, "sigma"),
    ({"mean_evaluation": "yes"}, "mean_evaluation"),
])
def test_invalid_arguments_are_named(cls, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [CMAES, SepCMAES])
def test_config_round_trips(cls):
    strategy = cls(population_size=8, sigma=0.3, mean_evaluation=False)
    config = strategy.get_config()
    assert config == {"population_size": 8, "sigma": 0.3, "mean_evaluation": False}
    assert cls.from_config(config).get_config() == config


def test_cma_es_refuses_more_than_its_limit_naming_the_count_and_the_alternatives():
    with pytest.raises(ValueError, match=f"n={MAX_WEIGHTS + 1} .*{MAX_WEIGHTS}.*SepCMAES.*SNES"):
        CMAES(population_size=4).init([(MAX_WEIGHTS - 9,), (10,)], seed=0)
    # The diagonal variant takes it.
    state = SepCMAES(population_size=4).init([(MAX_WEIGHTS + 1,)], seed=0)
    assert state.variances.shape == (MAX_WEIGHTS + 1,)


def tiny_model():
    keras.utils.set_random_seed(0)
    model = keras_lrne.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                   keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model


def tiny_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [CMAES, SepCMAES])
def test_evolve_runs_and_the_model_holds_the_mean(cls):
    x, y = tiny_data()
    model = tiny_model()
    # The mean starts at the weights the model holds (known values here): the first
    # generation's `loss` is the mean's, and the lineage keeps them.
    start = [np.full(v.shape, 0.25, "float32") for v in model.trainable_variables]
    model.set_weights(start)
    start_loss = float(model.evaluate(x, y, verbose=0))
    history = model.evolve(x, y, strategy=cls(population_size=8, sigma=0.5),
                           generations=12, seed=0, verbose=0)
    losses = history.history["loss"]
    assert math.isclose(losses[0], start_loss, rel_tol=1e-5)
    for a, b in zip(model.lineage.start, start):
        np.testing.assert_array_equal(a, b)
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert "sigma" in history.history and "best_member_loss" in history.history
    best = model._evolution_run.strategy.best(model._evolution_state)
    for variable, value in zip(model.trainable_variables, best):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable),
                                      keras.ops.convert_to_numpy(value))
    # The model holds the mean whose loss `loss` logged.
    assert math.isclose(float(model.evaluate(x, y, verbose=0)), losses[-1], rel_tol=1e-4)


class Stop(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("power cut")


@pytest.mark.slow
@pytest.mark.parametrize("cls", [CMAES, SepCMAES])
def test_a_resumed_run_ends_bit_identical_to_an_unbroken_one(tmp_path, cls):
    x, y = tiny_data()

    def run(callbacks):
        model = tiny_model()
        history = model.evolve(x, y, strategy=cls(population_size=6, sigma=0.3),
                               generations=4, seed=1, verbose=0, callbacks=callbacks)
        return history, [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]

    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="power cut"):
        run([keras.callbacks.BackupAndRestore(backup), Stop()])
    resumed, resumed_weights = run([keras.callbacks.BackupAndRestore(backup)])
    straight, straight_weights = run([])
    assert resumed.epoch == [0, 1, 2, 3]
    for key in ("loss", "sigma", "best_member_loss"):
        assert resumed.history[key] == straight.history[key]
    for a, b in zip(resumed_weights, straight_weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", [CMAES, SepCMAES])
def test_one_object_serves_two_interleaved_runs(cls):
    """The instance holds configuration only: two runs on different shapes, stepped in
    turn through one object, equal the same runs through their own objects."""

    def steps(strategy, states, order):
        for key in order:
            population, states[key] = strategy.ask(states[key])
            x = np.asarray(keras.ops.convert_to_numpy(population[0]), np.float64)
            states[key], _ = strategy.tell(states[key], sphere(x.reshape(len(x), -1)))
        return states

    shared = cls(population_size=6, sigma=0.3)
    states = steps(shared, {"a": shared.init([(4,)], 0), "b": shared.init([(2, 3)], 1)},
                   ["a", "b"] * 3)
    alone_a, alone_b = cls(population_size=6, sigma=0.3), cls(population_size=6, sigma=0.3)
    a = steps(alone_a, {"a": alone_a.init([(4,)], 0)}, ["a"] * 3)["a"]
    b = steps(alone_b, {"b": alone_b.init([(2, 3)], 1)}, ["b"] * 3)["b"]
    np.testing.assert_array_equal(states["a"].mean, a.mean)
    np.testing.assert_array_equal(states["b"].mean, b.mean)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["CMAES", "SepCMAES", "SNES"])
def test_evolve_takes_the_default_population_size(name):
    """`population_size=None` (Hansen's `4 + floor(3 ln n)`): `evolve()` plans its
    evaluation with `num_members_for(specs)`, before `init` has seen the variables."""
    cls = getattr(keras_lrne.strategies, name)
    x, y = tiny_data()
    model = tiny_model()
    n = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert cls().num_members_for([tuple(v.shape) for v in model.trainable_variables]) == \
        4 + math.floor(3 * math.log(n)) + 1  # the mean is evaluated as a last member
    history = model.evolve(x, y, strategy=cls(sigma=0.5), generations=2, seed=0, verbose=0)
    assert len(history.history["loss"]) == 2
    assert model._evolution_run.num_members == 4 + math.floor(3 * math.log(n)) + 1

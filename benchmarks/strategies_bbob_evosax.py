"""keras-lrne's SNES, PGPE and SepCMAES against evosax's, side by side on benchmark
functions.

Both implementations run the same algorithm with the same hyper-parameters on the same
functions, dimensions, population sizes and budgets, over the same seeds (the seed picks
each run's initial mean and noise; the two libraries draw differently, so runs are
paired by seed, not equal). A run evaluates its distribution's mean every generation;
"evaluations to target" is the population size times the first generation whose mean
reaches the target (the mean's own evaluation is not counted, as evosax's runs do not
make it), "final" the mean's value after the budget.

`SepCMAES` runs against evosax's `Sep_CMA_ES` on the problems it runs against pycma
(`strategies_bbob_pycma.py`: the same functions, dimensions, population sizes, budgets,
targets and initial step sizes), both from the same starting mean (the strategy's
initial mean for the seed) and the mean measured after each update in both; a run stops
once its mean reaches the target ("final" is then the mean's last value), or when
evosax's mean becomes non-finite (its float32 state can break down once the step size
collapses; the run's final value is then its last finite one, and a note says so).

Needs the `bench` extra (`pip install keras-lrne[bench]`: evosax) and runs on the JAX
backend (evosax is JAX):

    KERAS_BACKEND=jax python benchmarks/strategies_bbob.py evosax --seeds 10

It prints one Markdown table: per strategy and function, the median evaluations to
target (over the successful seeds), the success rates, the median final values and the
ratio keras-lrne / evosax of the median evaluations (1.0 is the same speed, below 1
fewer evaluations).
"""

import argparse
import math
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
from keras import ops

from keras_lrne.strategies import PGPE, SNES, SepCMAES


def sphere(x):
    return np.sum(x**2, axis=-1)


def rosenbrock(x):
    return np.sum(100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2, -1)


def rastrigin(x):
    return 10 * x.shape[-1] + np.sum(x**2 - 10 * np.cos(2 * np.pi * x), axis=-1)


FUNCTIONS = {"sphere": sphere, "rosenbrock": rosenbrock, "rastrigin": rastrigin}

#: (strategy, function, dimension, population, generations, target, keras-lrne's
#: hyper-parameters). evosax runs the same hyper-parameters (see `evosax_run`).
CASES = [
    ("SNES", "sphere", 10, 10, 300, 1e-8, {"sigma": 1.0}),
    ("SNES", "rosenbrock", 10, 10, 1500, 5.5, {"sigma": 1.0}),
    ("SNES", "rastrigin", 10, 10, 300, 10.0, {"sigma": 1.0}),
    ("SNES", "sphere", 1000, 24, 1000, 650.0, {"sigma": 1.0}),
    ("PGPE", "sphere", 10, 20, 300, 0.5, {"sigma": 1.0}),
    ("PGPE", "rosenbrock", 10, 20, 1500, 30.0, {"sigma": 1.0}),
    ("PGPE", "rastrigin", 10, 20, 300, 80.0, {"sigma": 1.0}),
    ("PGPE", "sphere", 1000, 100, 600, 20.0, {"sigma": 1.0}),
]


#: SepCMAES's cases: (function, dimension, population, budget in evaluations, target,
#: sigma), those of `strategies_bbob_pycma.PROBLEMS` plus its 1,000-D Sphere.
SEP_CASES = [
    ("sphere", 10, 10, 5_000, 1e-8, 0.5),
    ("rosenbrock", 10, 10, 20_000, 1e-8, 0.5),
    ("rastrigin", 10, 100, 50_000, 1e-8, 2.0),
    ("sphere", 1000, 24, 150_000, 1e-6, 0.5),
]


def sep_keras_lrne_run(name, dim, population, budget, target, sigma, seed):
    """`(x0, values of the mean after each update)` of a `SepCMAES` run, stopped when
    the mean reaches `target` (or its step size collapses)."""
    fn = FUNCTIONS[name]
    es = SepCMAES(population_size=population, sigma=sigma, mean_evaluation=False)
    state = es.init([(dim,)], seed)
    x0 = state.mean.copy()
    values = []
    for _ in range(budget // population):
        members, state = es.ask(state)
        x = np.asarray(ops.convert_to_numpy(members[0]), np.float64)
        try:
            state, _ = es.tell(state, fn(x))
        except FloatingPointError:  # the step size collapsed: the run ends there
            break
        values.append(float(fn(state.mean)))
        if values[-1] <= target:
            break
    return x0, np.asarray(values)


def sep_evosax_run(x0, name, dim, population, budget, target, sigma, seed, compiled):
    """`values of the mean after each update` of evosax's `Sep_CMA_ES` from `x0`, with
    the same population, step size and stopping rule. `compiled` caches its jitted
    `ask` and `tell` per `(dim, population)`."""
    from evosax.algorithms import Sep_CMA_ES

    fn = FUNCTIONS[name]
    if (dim, population) not in compiled:
        es = Sep_CMA_ES(population_size=population, solution=jnp.zeros(dim))
        compiled[(dim, population)] = (es, jax.jit(es.ask), jax.jit(es.tell))
    es, ask, tell = compiled[(dim, population)]
    params = es.default_params.replace(std_init=jnp.asarray(sigma, jnp.float32))
    key = jax.random.key(seed)
    key, init_key = jax.random.split(key)
    state = es.init(init_key, jnp.asarray(x0, jnp.float32), params)
    values = []
    for _ in range(budget // population):
        key, ask_key, tell_key = jax.random.split(key, 3)
        x, state = ask(ask_key, state, params)
        fitness = jnp.asarray(fn(np.asarray(x, np.float64)), jnp.float32)
        state, _ = tell(tell_key, x, fitness, state, params)
        value = float(fn(np.asarray(state.mean, np.float64)))
        if not math.isfinite(value):  # its float32 state broke down: the run ends there
            compiled.setdefault("non_finite", []).append((name, dim, seed, len(values)))
            break
        values.append(value)
        if value <= target:
            break
    return np.asarray(values)


def sep_rows(seeds, quick=False):
    """The Markdown rows of `SepCMAES` against evosax's `Sep_CMA_ES` (`quick`: one tenth
    of every budget)."""
    compiled = {}
    for name, dim, population, budget, target, sigma in SEP_CASES:
        if quick:
            budget = max(population, budget // 10)
        ours, theirs = [], []
        for seed in range(seeds):
            x0, values = sep_keras_lrne_run(name, dim, population, budget, target, sigma,
                                            seed)
            ours.append(values)
            theirs.append(sep_evosax_run(x0, name, dim, population, budget, target, sigma,
                                         seed, compiled))
        a, a_rate, a_final = summarise(ours, target, population)
        b, b_rate, b_final = summarise(theirs, target, population)
        ratio = a / b if math.isfinite(a) and math.isfinite(b) else math.nan
        yield (f"| SepCMAES | {name} | {dim} | {population} | {budget} | {target:g} | "
               f"{a:g} | {b:g} | {ratio:.2f} | {a_rate:.0%} / {b_rate:.0%} | "
               f"{a_final:.3g} | {b_final:.3g} |")
    for name, dim, seed, generations in compiled.get("non_finite", []):
        yield (f"(evosax's Sep_CMA_ES: the mean became non-finite on {name} {dim}-D, seed "
               f"{seed}, after {generations} generations; its final value is the last "
               "finite one)")


def keras_lrne_strategy(strategy, population, kwargs):
    """The keras-lrne strategy of a case (one object serves every seed: its compiled
    operators are cached by the variables' signature)."""
    if strategy == "SNES":
        return SNES(population_size=population, **kwargs)
    return PGPE(population_size=population, **kwargs)


def keras_lrne_run(es, name, dim, generations, seed):
    """`(values of the mean per generation)` of a keras-lrne run."""
    fn = FUNCTIONS[name]
    state = es.init([(dim,)], seed)
    values = []
    for _ in range(generations):
        recipe, state = es.ask(state)
        x = np.asarray(ops.convert_to_numpy(recipe.materialize()[0]), np.float64)
        losses = fn(x)
        state, logs = es.tell(state, losses)
        values.append(logs["loss"])  # the mean's value (mean_evaluation, the default)
    return np.asarray(values)


def evosax_strategy(strategy, dim, population, kwargs):
    """evosax's `(algorithm, params)` with the case's hyper-parameters (one object
    serves every seed, so its jitted `ask`/`tell` compile once)."""
    from evosax.algorithms import PGPE as EvosaxPGPE
    from evosax.algorithms import SNES as EvosaxSNES
    from evosax.core.optimizer import clipup

    sigma = kwargs.get("sigma", 0.1)
    if strategy == "SNES":
        es = EvosaxSNES(population_size=population, solution=jnp.zeros(dim))
        params = es.default_params.replace(std_init=jnp.asarray(sigma))
    else:
        lr = kwargs.get("center_learning_rate", 0.15)
        es = EvosaxPGPE(population_size=population, solution=jnp.zeros(dim),
                        optimizer=clipup(learning_rate=lr,
                                         max_velocity=kwargs.get("max_speed", 2 * lr)))
        params = es.default_params.replace(std_init=sigma,
                                           std_lr=kwargs.get("stdev_learning_rate", 0.1))
    return es, params


def evosax_run(es, params, name, dim, generations, seed):
    """`(values of the mean per generation)` of evosax's run with the same settings."""
    fn = FUNCTIONS[name]
    key = jax.random.key(seed)
    key, init_key = jax.random.split(key)
    mean = jax.random.normal(init_key, (dim,))
    state = es.init(init_key, mean, params)
    values = []
    for _ in range(generations):
        key, ask_key, tell_key = jax.random.split(key, 3)
        x, state = es.ask(ask_key, state, params)
        fitness = jnp.asarray(fn(np.asarray(x, np.float64)), jnp.float32)
        state, _ = es.tell(tell_key, x, fitness, state, params)
        values.append(float(fn(np.asarray(state.mean, np.float64))))
    return np.asarray(values)


def evaluations_to_target(values, target, population):
    hits = np.nonzero(values <= target)[0]
    return (int(hits[0]) + 1) * population if hits.size else math.nan


def summarise(runs, target, population):
    evals = np.asarray([evaluations_to_target(v, target, population) for v in runs])
    ok = evals[np.isfinite(evals)]
    return (float(np.median(ok)) if ok.size else math.nan, ok.size / len(evals),
            float(np.median([v[-1] for v in runs])))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--strategies", default="SNES,PGPE,SepCMAES")
    parser.add_argument("--quick", action="store_true",
                        help="one tenth of every budget (a smoke run)")
    args = parser.parse_args(argv)
    chosen = set(args.strategies.split(","))
    print("| strategy | function | dim | P | budget (evals) | target | keras-lrne evals "
          "(median) | evosax evals (median) | ratio | success keras-lrne / evosax | "
          "final keras-lrne | final evosax |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for strategy, name, dim, population, generations, target, kwargs in CASES:
        if strategy not in chosen:
            continue
        if args.quick:
            generations = max(1, generations // 10)
        ours_es = keras_lrne_strategy(strategy, population, kwargs)
        ours = [keras_lrne_run(ours_es, name, dim, generations, s)
                for s in range(args.seeds)]
        theirs_es, params = evosax_strategy(strategy, dim, population, kwargs)
        theirs = [evosax_run(theirs_es, params, name, dim, generations, s)
                  for s in range(args.seeds)]
        a, a_rate, a_final = summarise(ours, target, population)
        b, b_rate, b_final = summarise(theirs, target, population)
        ratio = a / b if math.isfinite(a) and math.isfinite(b) else math.nan
        print(f"| {strategy} | {name} | {dim} | {population} | {population * generations} "
              f"| {target:g} | {a:g} | {b:g} | {ratio:.2f} | {a_rate:.0%} / {b_rate:.0%} | "
              f"{a_final:.3g} | {b_final:.3g} |", flush=True)
    if "SepCMAES" in chosen:
        for row in sep_rows(args.seeds, args.quick):
            print(row, flush=True)


if __name__ == "__main__":
    main()

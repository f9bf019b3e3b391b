"""keras-lrne's CMA-ES strategies against pycma, Hansen's reference implementation.

Runs `keras_lrne.strategies.CMAES` against `cma.CMAEvolutionStrategy` and `SepCMAES`
against pycma with `CMA_diagonal=True`, on Sphere, Rosenbrock and Rastrigin, with the
same dimension, starting point (the strategy's initial mean of the seed), initial step
size, population size and evaluation budget, over `--seeds` seeds. Evaluations count
the population only (keras-lrne's strategies run with `mean_evaluation=False`). pycma
runs with its defaults (active CMA, its own learning rates; pycma's `CMA_diagonal`
uses its own `c_1`/`c_mu` for the diagonal and, by default, two-point step-size
adaptation instead of CSA: `--csa` makes it CSA) unless `--no-active`.

Per strategy and function it prints: the median evaluations to reach the target over
the successful runs (`evals`), the median final best value (`final`), the success
rate, and the ratio keras-lrne / reference of the median evaluations.

    pip install "keras-lrne[bench]"
    python benchmarks/strategies_bbob.py pycma --seeds 10

The last line is JSON.
"""

import argparse
import json
import statistics
import warnings

import numpy as np


def sphere(x):
    return (x ** 2).sum(axis=-1)


def rosenbrock(x):
    return (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(axis=-1)


def rastrigin(x):
    return 10 * x.shape[-1] + (x ** 2 - 10 * np.cos(2 * np.pi * x)).sum(axis=-1)


#: (function, dimension, population size, evaluation budget, target, sigma).
PROBLEMS = [
    (sphere, 10, 10, 5_000, 1e-8, 0.5),
    (rosenbrock, 10, 10, 20_000, 1e-8, 0.5),
    (rastrigin, 10, 100, 50_000, 1e-8, 2.0),
]


def run_lrne(cls, fn, n, population, budget, target, sigma, seed):
    import keras

    strategy = cls(population_size=population, sigma=sigma, mean_evaluation=False)
    state = strategy.init([(n,)], seed)
    x0 = state.mean.copy()
    evals, best, hit = 0, np.inf, None
    while evals < budget:
        members, state = strategy.ask(state)
        x = np.asarray(keras.ops.convert_to_numpy(members[0]), np.float64)
        f = fn(x)
        evals += population
        best = min(best, float(f.min()))
        if hit is None and best <= target:
            hit = evals
            break
        state, _ = strategy.tell(state, f)
    return x0, hit, best


def run_pycma(x0, fn, population, budget, target, sigma, seed, diagonal, active, csa=False):
    import cma

    options = {"popsize": population, "seed": seed + 1, "verbose": -9, "maxfevals": budget,
               "tolfun": 0, "tolx": 0, "tolfunhist": 0, "tolstagnation": 10**9,
               "CMA_active": active, "tolflatfitness": 10**9}
    if diagonal:
        options["CMA_diagonal"] = True
        if csa:  # pycma's diagonal mode adapts sigma by TPA by default
            options["AdaptSigma"] = cma.sigma_adaptation.CMAAdaptSigmaCSA
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        es = cma.CMAEvolutionStrategy(list(x0), sigma, options)
        evals, best, hit = 0, np.inf, None
        while evals < budget:
            x = es.ask()
            f = fn(np.asarray(x))
            evals += population
            best = min(best, float(f.min()))
            if best <= target:
                hit = evals
                break
            es.tell(x, list(f))
            if es.stop() and "maxfevals" not in es.stop():
                break
    return hit, best


def summary(results):
    hits = [h for h, _ in results if h is not None]
    return {"evals": statistics.median(hits) if hits else None,
            "final": statistics.median(b for _, b in results),
            "success": len(hits) / len(results)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--no-active", action="store_true",
                        help="run pycma without active CMA (negative weights)")
    parser.add_argument("--sep-1000", action="store_true",
                        help="also SepCMAES on the 1,000-dimensional Sphere")
    parser.add_argument("--csa", action="store_true",
                        help="pycma's diagonal runs adapt sigma by CSA (cumulative step-size "
                        "adaptation, as Ros and Hansen's sep-CMA-ES and SepCMAES do) instead "
                        "of its default for CMA_diagonal, TPA (two-point adaptation)")
    parser.add_argument("--only", default=None, metavar="STRATEGY[:FUNCTION[:N]]",
                        help="run one strategy (CMAES or SepCMAES), optionally one function "
                        "and dimension, e.g. SepCMAES:sphere:1000")
    args = parser.parse_args(argv)
    from keras_lrne.strategies import CMAES, SepCMAES

    problems = list(PROBLEMS)
    rows = []
    for cls, diagonal in ((CMAES, False), (SepCMAES, True)):
        extra = [(sphere, 1000, 24, 150_000, 1e-6, 0.5)] if diagonal and args.sep_1000 else []
        for fn, n, population, budget, target, sigma in problems + extra:
            wanted = (args.only or "").split(":")
            if args.only and [cls.__name__, fn.__name__, str(n)][:len(wanted)] != wanted:
                continue
            ours, reference = [], []
            for seed in range(args.seeds):
                x0, hit, best = run_lrne(cls, fn, n, population, budget, target, sigma, seed)
                ours.append((hit, best))
                reference.append(run_pycma(x0, fn, population, budget, target, sigma, seed,
                                           diagonal, not args.no_active, args.csa))
            a, b = summary(ours), summary(reference)
            ratio = a["evals"] / b["evals"] if a["evals"] and b["evals"] else None
            rows.append({"strategy": cls.__name__, "function": fn.__name__, "n": n,
                         "population": population, "budget": budget, "target": target,
                         "sigma": sigma, "keras_lrne": a, "pycma": b, "ratio": ratio})
    header = (f"{'strategy':9} {'function':10} {'n':>5} {'pop':>4} {'budget':>7} "
              f"{'evals':>8} {'ref evals':>9} {'ratio':>5} {'final':>9} {'ref final':>9} "
              f"{'succ':>5} {'ref succ':>8}")
    print(header)
    for r in rows:
        a, b = r["keras_lrne"], r["pycma"]

        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"

        print(f"{r['strategy']:9} {r['function']:10} {r['n']:>5} {r['population']:>4} "
              f"{r['budget']:>7} {fmt(a['evals'], '>8.0f')} {fmt(b['evals'], '>9.0f')} "
              f"{fmt(r['ratio'], '>5.2f')} {a['final']:>9.2e} {b['final']:>9.2e} "
              f"{a['success']:>5.0%} {b['success']:>8.0%}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""The GA's reproduction step: the one row implementation vs a children-only variant.

The GA builds every row of a new population with one operator (survivors copied,
children as parent plus the noise of their seed; the same rows Ray workers and
`rebuild` make). A first version of it drew (and discarded) noise for the survivors
too: 1.39x slower on the factorized LM genome, 1.15x on the full one (P=64, 8 parents,
2-core CPU). It now skips them when it knows the survivors come first. This measures it
against a variant written here that draws noise for the children only and concatenates
the survivors (how `reproduce` was written before it had one row operator), on
the paper's LM genomes (factorized and full) in one process, both compiled, best of
`--repeats` timings each. It also checks that both give the same population, bit for
bit. The last line is one JSON object.

    python benchmarks/ga_reproduce.py [--population 64] [--parents 8]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from keras import ops

import keras_lrne
from keras_lrne import backend as lrne_backend
from keras_lrne import genome
from keras_lrne.strategies import GA


def children_only(ga, specs):
    """Survivors concatenated, noise drawn for the children only."""
    bk = lrne_backend.get()
    stds = np.concatenate([np.full((int(np.prod(s.shape)),), std, "float32")
                           for s, std in zip(specs, ga.noise_stds(specs))])

    def reproduce(population, elite_idx, parent_idx, seeds):
        shapes = [tuple(v.shape[1:]) for v in population]
        sizes = [int(np.prod(shape)) for shape in shapes]
        noise = bk.barrier(bk.seeded_normal(seeds, 0, (sum(sizes),), "float32"))
        noise = bk.barrier(noise * stds)
        new, offset = [], 0
        for values, shape, size in zip(population, shapes, sizes):
            piece = ops.reshape(noise[:, offset: offset + size], (-1, *shape))
            offset += size
            elites = ops.take(values, elite_idx, axis=0)
            parents = ops.take(values, parent_idx, axis=0)
            new.append(ops.concatenate([elites, parents + ops.cast(piece, values.dtype)], 0))
        return new

    return bk.compile_random(reproduce)


def best_time(fn, args, repeats):
    bk = lrne_backend.get()
    bk.block(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bk.block(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--population", type=int, default=64, help="population size")
    parser.add_argument("--parents", type=int, default=8, help="survivors per generation")
    parser.add_argument("--repeats", type=int, default=5, help="timings per variant")
    args = parser.parse_args(argv)
    results = {}
    for variant in ("factorized", "full"):
        model = keras_lrne.presets.language_model(variant, vocab_size=2048,
                                                  sequence_length=128)
        specs = [s for s in genome.collect_variable_specs(model) if s.evolvable]
        ga = GA(args.population, args.parents)
        ga.init(specs, seed=0)
        population = genome.initial_population(specs, 0, args.population)
        rng = np.random.default_rng(0)
        elites = np.arange(args.parents, dtype=np.int32)
        parents = rng.integers(0, args.parents, args.population - args.parents).astype(np.int32)
        seeds = rng.integers(0, 2**31 - 1, args.population - args.parents).astype(np.int32)
        call = (population, elites, parents, seeds)
        one = ga._reproduce
        other = children_only(ga, specs)
        same = all(np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(one(*call), other(*call)))
        t_one, t_other = best_time(one, call, args.repeats), best_time(other, call, args.repeats)
        results[variant] = {"parameters": int(sum(np.prod(s.shape) for s in specs)),
                            "row_operator_s": t_one, "children_only_s": t_other,
                            "ratio": t_one / t_other, "bit_identical": bool(same)}
        print(f"{variant}: {results[variant]['parameters']:,} evolved numbers, P="
              f"{args.population}: one row operator {t_one * 1e3:.1f} ms, children only "
              f"{t_other * 1e3:.1f} ms, ratio {t_one / t_other:.2f}, bit-identical {same}",
              flush=True)
    print(json.dumps({"population": args.population, "parents": args.parents, **results}))


if __name__ == "__main__":
    main()

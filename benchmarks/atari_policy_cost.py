"""How much of the Atari stage-1 time saving is the factorized conv's vectorisation?

The paper's factorized Atari policy (rank 4) needs fewer multiply-adds per frame than the
full Nature-DQN policy, and `FactorizedConv2D` evaluates a population as one matrix
product inside the population map (`layers/_vectorized.py`), while a Keras `Conv2D`
with a different kernel per member is vectorised by the backend's `vectorized_map`
(TensorFlow's pfor; JAX's vmap). This script times, in one process, the compiled
population policy call the rollout engine makes (`RolloutEvaluator`'s policy, one frame
per member) for both variants, and the same model's plain compiled forward of one frame
(one member), and prints:

- `population_ms`: one population call of P members (median of `--repeats`);
- `member_ms`: one plain single-model forward (batch 1), the cost of a per-member loop
  is P times this;
- `vs_loop`: population_ms / (P * member_ms) (1.0: the population call costs what a
  loop over members would; below 1: it shares work across members);
- `macs`: multiply-adds per frame of one member (convs and dense layers);
- and the ratios full / factorized of time and of multiply-adds. Where the time ratio
  exceeds the multiply-add ratio, the full policy pays for more than its arithmetic.

    python benchmarks/atari_policy_cost.py --population 16 --repeats 50

The last line is JSON.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import keras_lrne
from keras_lrne import genome
from keras_lrne import population as pop
from keras_lrne.backend import get as backend
from keras_lrne.rollout import RolloutEvaluator


def multiply_adds(model):
    """Multiply-adds per frame of one member: convs (materialised or two-step) + dense."""
    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        out = getattr(layer, "output", None)
        if out is None:
            continue
        if isinstance(layer, keras_lrne.layers.FactorizedConv2D):
            cin, (kh, kw) = layer.input.shape[-1], layer.kernel_size
            total += out.shape[1] * out.shape[2] * (kh * kw * cin * layer.rank
                                                    + layer.rank * layer.filters)
        elif isinstance(layer, keras.layers.Conv2D):
            cin, (kh, kw) = layer.input.shape[-1], layer.kernel_size
            total += out.shape[1] * out.shape[2] * kh * kw * cin * layer.filters
        elif isinstance(layer, keras_lrne.layers.FactorizedDense):
            n_in = layer.input.shape[-1]
            total += n_in * layer.rank + layer.rank * layer.units
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)


def median_ms(fn, repeats):
    fn()  # compile
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure(variant, args):
    task = keras_lrne.tasks.Atari(args.game)
    model = keras_lrne.presets.atari_policy(variant, num_actions=task.num_outputs, rank=4)
    specs = genome.collect_variable_specs(model)
    functions = pop.PopulationFunctions(model, specs, None, chunk_size=args.population)
    population = genome.initial_population(specs, 0, args.population)
    evaluator = RolloutEvaluator(model, functions, task, args.population, seed=0)
    try:
        _, policy = evaluator._functions_for(args.population)
        frozen, non_trainable = functions.frozen_values(), functions.non_trainable_values()
        rng = np.random.default_rng(0)
        # Raw observations as the vector env returns them: 4 stacked 84x84 RGB frames.
        frames = rng.integers(0, 256, (args.population, 4, 84, 84, 3), dtype=np.uint8)
        x = task.host_input(frames)
        bk = backend()

        def population_call():
            return bk.to_numpy(policy(population, frozen, non_trainable, x))

        single = bk.compile_fixed(lambda f: model(task.export_input(f), training=False))
        one = x[:1]

        def member_call():
            return bk.to_numpy(single(one))

        population_ms = median_ms(population_call, args.repeats)
        member_ms = median_ms(member_call, args.repeats)
    finally:
        evaluator.close()
    return {"variant": variant, "parameters": int(model.count_params()),
            "macs": multiply_adds(model), "population_ms": population_ms,
            "member_ms": member_ms,
            "vs_loop": population_ms / (args.population * member_ms)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--game", default="Frostbite")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    rows = {v: measure(v, args) for v in ("factorized", "full")}
    for row in rows.values():
        print(f"{row['variant']:>10}: {row['parameters']:,} parameters, "
              f"{row['macs'] / 1e6:.1f} M multiply-adds per frame; population call "
              f"{row['population_ms']:.2f} ms for {args.population} members, one member "
              f"{row['member_ms']:.2f} ms; population / (P x member) = "
              f"{row['vs_loop']:.2f}")
    fact, full = rows["factorized"], rows["full"]
    result = {"backend": keras.backend.backend(), "game": args.game,
              "population": args.population, **{f"{k}_{v}": r[k] for v, r in rows.items()
                                                  for k in ("macs", "population_ms",
                                                            "member_ms", "vs_loop")},
              "time_ratio_full_over_factorized": full["population_ms"]
              / fact["population_ms"],
              "macs_ratio_full_over_factorized": full["macs"] / fact["macs"],
              "member_time_ratio_full_over_factorized": full["member_ms"]
              / fact["member_ms"]}
    print(f"full / factorized: population call {result['time_ratio_full_over_factorized']:.2f}x,"
          f" one member {result['member_time_ratio_full_over_factorized']:.2f}x, "
          f"multiply-adds {result['macs_ratio_full_over_factorized']:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

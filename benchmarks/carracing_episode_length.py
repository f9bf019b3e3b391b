"""The paper's CarRacing mechanism for its 0.62x stage-1 evaluation time: are the mutants
of a factorized policy worse, so that their episodes end sooner under early termination?

For each variant (factorized, full; `--variants` may add small) and seed, the parent is
the policy `keras-lrne carracing --variant V --seed S` starts from (the same argument
parser, seeding and builders: the CLI's defaults, rank 1 factorized) at its
initialisation. From it `--children` children are drawn with the GA's own mutation (the
CLI's `GA`, `GA.noise_stds`: mutation rate 0.01 times each tensor's init std; factors use
the factor rate, its square root) from a fixed generator. The parent and every child play
ONE episode each, all on the same track (the episode seed of generation 0 of the run
seed), under the paper's early termination (an episode ends after 21 consecutive negative
rewards) and a step cap of `--max-episode-steps`, in one `RolloutEvaluator` call with the
run's `PopulationFunctions` (the engine's rollout path). A short warm-up call on another
track (step cap 2 x 21) traces the policy first, so the timed call measures playing, not
tracing.

Per variant and seed it reports the parent's return and episode length; for the children
the return change (child - parent: mean, median, fraction that improve), the episode
length (mean, median), the fraction ended by early termination, the env steps per child
relative to the parent, and the seconds per env step (environment plus policy) of the
timed call. A table per seed, the means over seeds, and as the last line JSON.

    python benchmarks/carracing_episode_length.py --seeds 0,1,2 --children 64
    python benchmarks/carracing_episode_length.py --seeds 0 --children 4 \\
        --max-episode-steps 50                                              # dry run
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import keras_lrne
from keras_lrne import cli, genome
from keras_lrne import population as pop
from keras_lrne.commands import builders, carracing
from keras_lrne.rollout import RolloutEvaluator
from keras_lrne.tasks.car_racing import NEGATIVE_STREAK

KEYS = ("parent_return", "parent_steps", "mean_change", "median_change",
        "improved_fraction", "mean_steps", "median_steps", "early_fraction",
        "steps_vs_parent", "seconds_per_step")


def cli_parent(variant, seed):
    """The `keras-lrne carracing --variant V --seed S` policy at initialisation and its GA."""
    args = cli.build_parser().parse_args(
        ["carracing", "--variant", variant, "--seed", str(seed)])
    keras.utils.set_random_seed(args.seed)  # as `environments.run_once` does
    _task, model = carracing.make_task_and_model(args)
    return model, builders.make_strategy(args)


def children_of(model, strategy, children, seed):
    """The parent (row 0) and `children` GA mutants, one `(children + 1, ...)` tensor per
    evolvable variable; also the run's `PopulationFunctions`."""
    specs = genome.collect_variable_specs(model)  # freeze_normalization=True, as evolve()
    evolvable = [s for s in specs if s.evolvable]
    stds = strategy.noise_stds(evolvable)
    rng = np.random.default_rng([seed, 11])
    parent = [keras.ops.convert_to_numpy(model.trainable_variables[s.index]) for s in evolvable]
    population = [np.concatenate([p[None], p[None] + rng.normal(0, std, (children, *p.shape))
                                  .astype(p.dtype)]) for p, std in zip(parent, stds)]
    functions = pop.PopulationFunctions(model, specs, None, chunk_size=min(16, children + 1))
    return [keras.ops.convert_to_tensor(v) for v in population], functions


def measure(variant, seed, children, max_steps):
    model, strategy = cli_parent(variant, seed)
    population, functions = children_of(model, strategy, children, seed)
    task = keras_lrne.tasks.CarRacing(episodes=1, max_episode_steps=max_steps,
                                      early_termination=True)
    rollout = RolloutEvaluator(model, functions, task, children + 1, seed)
    try:
        cap = task.episode_cap
        task.episode_cap = min(cap, 2 * NEGATIVE_STREAK)  # warm-up: trace the policy
        rollout.evaluate(population, generation=1)
        task.episode_cap = cap
        start = time.perf_counter()
        losses, returns, logs = rollout.evaluate(population, generation=0)
        seconds = time.perf_counter() - start
    finally:
        rollout.close()
    steps, early = rollout.episode_steps, rollout.early_terminated
    assert int(steps.sum()) == logs["env_steps"] and len(steps) == children + 1
    delta = returns[1:] - returns[0]
    return {
        "parameters": int(model.count_params()),
        "parent_return": float(returns[0]), "parent_steps": int(steps[0]),
        "parent_early": bool(early[0]),
        "mean_change": float(np.mean(delta)), "median_change": float(np.median(delta)),
        "improved_fraction": float(np.mean(delta > 0)),
        "mean_steps": float(np.mean(steps[1:])), "median_steps": float(np.median(steps[1:])),
        "early_fraction": float(np.mean(early[1:])),
        "steps_vs_parent": float(np.mean(steps[1:]) / max(int(steps[0]), 1)),
        "seconds_per_step": seconds / max(logs["env_steps"], 1),
        "policy_share": float(logs["policy_share"]), "env_steps": int(logs["env_steps"]),
        "failed_members": int(np.isinf(losses).sum()),
    }


def row(name, r):
    return (f"{name:18s} {r['parent_return']:8.2f} {r['parent_steps']:6.0f} "
            f"{r['mean_change']:+8.2f} {r['median_change']:+8.2f} "
            f"{r['improved_fraction']:6.2f} {r['mean_steps']:7.1f} {r['median_steps']:6.1f} "
            f"{r['early_fraction']:6.2f} {r['steps_vs_parent']:6.2f} "
            f"{1e3 * r['seconds_per_step']:7.2f}")


HEADER = (f"{'variant / seed':18s} {'parent':>8s} {'steps':>6s} {'dR mean':>8s} "
          f"{'dR med':>8s} {'improv':>6s} {'len avg':>7s} {'len md':>6s} {'early':>6s} "
          f"{'vs par':>6s} {'ms/step':>7s}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--children", type=int, default=64)
    parser.add_argument("--max-episode-steps", type=int, default=300)
    parser.add_argument("--variants", default="factorized,full")
    args = parser.parse_args()
    variants = args.variants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    rows = []
    print(HEADER, flush=True)
    for seed in seeds:
        for variant in variants:
            result = measure(variant, seed, args.children, args.max_episode_steps)
            rows.append({"variant": variant, "seed": seed, **result})
            print(row(f"{variant} s{seed}", result)
                  + f"  (parent early {result['parent_early']}, failed "
                  f"{result['failed_members']}, policy share {result['policy_share']:.2f})",
                  flush=True)
    summary = {}
    print("\nmeans over seeds\n" + HEADER)
    for variant in variants:
        group = [r for r in rows if r["variant"] == variant]
        summary[variant] = {key: float(np.mean([r[key] for r in group])) for key in KEYS}
        print(row(f"{variant} mean", summary[variant]))
    if "factorized" in summary and "full" in summary:
        f, g = summary["factorized"], summary["full"]
        ratio = f["mean_steps"] / g["mean_steps"]
        summary["factorized_over_full_child_steps"] = ratio
        print(f"\nchild env steps, factorized / full: {ratio:.2f} (the paper's stage-1 "
              "evaluation time ratio: 0.62)")
    wall = time.perf_counter() - started
    print(f"wall {wall:.0f} s, load average {os.getloadavg()[0]:.1f}")
    print(json.dumps({"children": args.children, "seeds": args.seeds,
                      "max_episode_steps": args.max_episode_steps,
                      "backend": keras.backend.backend(), "wall_seconds": round(wall, 1),
                      "by_variant": summary, "rows": rows}))


if __name__ == "__main__":
    main()

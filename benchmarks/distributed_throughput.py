"""Evaluation in Ray workers on an Atari game: throughput, bytes and coordinator time.

Runs, in one process and with the same seed, the GA on the paper's factorized Atari
network (rank 4) over `--game` three ways: in this process (no distribution), and with
`RayWorkers(num_workers=n)` for every `n` of `--workers` (a local Ray runtime). For each
it reports, over generations 1.. (generation 0 compiles):

- `member_steps_per_second`: environment steps of all members per second of evaluation;
- `vs_one_process`: that rate over the one-process rate;
- `bytes_sent_per_generation` / `bytes_received_per_generation`: pickled size of what
  the coordinator sent to and received from the workers, next to `weights_bytes`, what
  sending every member's weights would take;
- `coordinator_seconds_per_generation`: wall time of a generation not spent waiting for
  workers (selection, reproduction, lineage, callbacks, dispatch);
- `same_history`: the episode returns equal the one-process run's.

It then projects, on paper, the paper's Atari generation (512 members x 2,500 steps) on
100 machines like this one: the evaluation time at the best rate measured here times
100, plus the measured coordinator time scaled to 512 members, plus the measured bytes
per member at 1 Gbit/s (against sending every member's weights). The last line printed
is one JSON object. Usage:

    python benchmarks/distributed_throughput.py
    KERAS_BACKEND=jax python benchmarks/distributed_throughput.py --population 32
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import keras
import numpy as np

import keras_lrne
from keras_lrne.distribution import RayWorkers


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--game", default="Frostbite", help="ALE game (default Frostbite)")
    parser.add_argument("--population", type=int, default=16, help="population (default 16)")
    parser.add_argument("--parents", type=int, default=4, help="GA survivors (default 4)")
    parser.add_argument("--max-episode-steps", type=int, default=200,
                        help="steps per episode at most (default 200)")
    parser.add_argument("--generations", type=int, default=3,
                        help="generations per run; the first is excluded (default 3)")
    parser.add_argument("--workers", default="1,2",
                        help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--machines", type=int, default=100,
                        help="machines in the projection (default 100)")
    args = parser.parse_args(argv)
    args.workers = [int(n) for n in args.workers.split(",") if n.strip()]
    if args.generations < 2:
        parser.error("--generations must be at least 2 (generation 0 compiles)")
    return args


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


class Timer(keras.callbacks.Callback):
    def __init__(self, workers):
        super().__init__()
        self.workers, self.rows = workers, []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        wall = time.perf_counter() - self._start
        row = {"wall": wall, "env_steps": logs["env_steps"],
               "eval_seconds": logs["env_steps"] / logs["frames_per_second"]}
        if self.workers is not None:
            row.update(sent=self.workers.bytes_sent, received=self.workers.bytes_received,
                       coordinator=wall - self.workers.wait_seconds)
        else:
            row["coordinator"] = wall - row["eval_seconds"]
        self.rows.append(row)


def run(args, workers):
    task = keras_lrne.tasks.Atari(args.game, max_episode_steps=args.max_episode_steps)
    keras.utils.set_random_seed(0)
    model = keras_lrne.presets.atari_policy("factorized", num_actions=task.num_outputs,
                                            rank=4)
    timer = Timer(workers)
    start = time.perf_counter()
    history = model.evolve(task, strategy=keras_lrne.strategies.GA(args.population,
                                                                   args.parents),
                           generations=args.generations, seed=0, verbose=0,
                           distribution=workers, callbacks=[timer])
    total = time.perf_counter() - start
    rows = timer.rows[1:]
    weights = sum(int(np.prod(s.shape)) * 4 for s in model.evolution_run.evolvable)
    result = {
        "member_steps_per_second": statistics.median(r["env_steps"] / r["eval_seconds"]
                                                     for r in rows),
        "generation_seconds": statistics.median(r["wall"] for r in rows),
        "coordinator_seconds_per_generation": statistics.median(r["coordinator"]
                                                                for r in rows),
        "weights_bytes": weights * args.population,
        "total_seconds": total,
        "returns": history.history["episode_return"],
    }
    if workers is not None:
        result["bytes_sent_per_generation"] = statistics.median(r["sent"] for r in rows)
        result["bytes_received_per_generation"] = statistics.median(r["received"]
                                                                    for r in rows)
    return result


def main():
    args = parse_args()
    table = {"process": run(args, None)}
    log(f"one process: {table['process']['member_steps_per_second']:.0f} member-steps/s")
    for n in args.workers:
        table[f"workers_{n}"] = run(args, RayWorkers(num_workers=n))
        log(f"{n} workers: {table[f'workers_{n}']['member_steps_per_second']:.0f} "
            "member-steps/s")
    base = table["process"]
    for row in table.values():
        row["vs_one_process"] = row["member_steps_per_second"] / base["member_steps_per_second"]
        row["same_history"] = row["returns"] == base["returns"]
    # On paper: one generation of the paper's size on `--machines` machines.
    # One machine does what the fastest setting did here; the coordinator's work grows
    # with the population (reproduction), so it is scaled linearly to 512 members.
    one = table[f"workers_{args.workers[-1]}"]
    paper_steps = 512 * 2500  # the paper's Atari generation: 512 members x 2,500 steps
    per_machine = max(row["member_steps_per_second"] for row in table.values())
    bytes_per_member = (one["bytes_sent_per_generation"] + one["bytes_received_per_generation"]
                        ) / args.population
    projection = {
        "machines": args.machines,
        "member_steps_per_second_per_machine": per_machine,
        "evaluation_seconds": paper_steps / (per_machine * args.machines),
        "coordinator_seconds": one["coordinator_seconds_per_generation"] * 512 / args.population,
        "network_seconds_at_1_gbit": bytes_per_member * 512 * 8 / 1e9,
        "weights_network_seconds_at_1_gbit": base["weights_bytes"] / args.population * 512
        * 8 / 1e9,
    }
    for name, row in table.items():
        row.pop("returns")
        log(f"{name:>10}: {row['member_steps_per_second']:>8.0f} member-steps/s "
            f"({row['vs_one_process']:.2f}x), generation {row['generation_seconds']:.2f} s, "
            f"coordinator {row['coordinator_seconds_per_generation']:.3f} s, sent "
            f"{row.get('bytes_sent_per_generation', 0):,.0f} B vs weights "
            f"{row['weights_bytes']:,} B, same history: {row['same_history']}")
    log(f"projection, {args.machines} machines, the paper's generation (512 x 2,500 steps): "
        f"evaluation {projection['evaluation_seconds']:.1f} s + coordinator "
        f"{projection['coordinator_seconds']:.2f} s + network "
        f"{projection['network_seconds_at_1_gbit'] * 1e3:.2f} ms (weights would take "
        f"{projection['weights_network_seconds_at_1_gbit']:.1f} s)")
    print(json.dumps({"backend": keras.config.backend(), "machine": platform.machine(),
                      "cpus": os.cpu_count(), "game": args.game,
                      "population": args.population, "rows": table,
                      "projection": projection}))


if __name__ == "__main__":
    main()

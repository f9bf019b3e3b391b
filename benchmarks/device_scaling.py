"""Population parallelism on one host: throughput and bytes moved on 1, 2 and 4 devices.

Runs, in one process, the GA on the paper's factorized TinyStories LM (random token ids,
vocabulary 2051) with `distribution=PopulationParallel(devices=n)` for every `n` of
`--devices` (and once without a distribution), in the order given and then reversed, and
reports per device count:

- `member_tokens_per_second`: the median `member_tokens_per_second` log of `evolve()`
  over generations (generation 0, compilation, excluded), over both passes;
- `vs_one_device`: that rate divided by the rate on one device (through
  `PopulationParallel(devices=1)`; the run without a distribution is reported beside it),
  and `efficiency`: `vs_one_device / n` (1.0: perfect scaling). On a CPU the simulated
  devices share the same cores, so there these measure the overhead of sharding (and
  how well one device alone uses the cores), not a speed-up from more hardware;
- `bytes_moved_per_generation`: on JAX, the bytes the compiled reproduction and
  evaluation programs' collectives produce per device (read from the compiled programs),
  next to the bytes of the whole population and of the survivors; on TensorFlow, the
  bytes of the slices sent to the replicas (computed: the population lives on the first
  device there);
- `losses_match`: the device-count runs' losses equal the one-device run's to 1e-5.

On a CPU, the devices are simulated: `XLA_FLAGS=--xla_force_host_platform_device_count`
(JAX) or logical CPU devices (TensorFlow), created by this script before the backend
starts. The last line printed is one JSON object. Usage:

    KERAS_BACKEND=jax python benchmarks/device_scaling.py
    python benchmarks/device_scaling.py --devices 1,2,4 --population 64
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="1,2,4",
                        help="comma-separated device counts (default 1,2,4)")
    parser.add_argument("--population", type=int, default=64, help="population (default 64)")
    parser.add_argument("--parents", type=int, default=8, help="GA survivors (default 8)")
    parser.add_argument("--sequences", type=int, default=16,
                        help="sequences per member (default 16)")
    parser.add_argument("--sequence-length", type=int, default=128,
                        help="tokens per sequence (default 128)")
    parser.add_argument("--generations", type=int, default=4,
                        help="generations per run and pass; the first is excluded (default 4)")
    parser.add_argument("--simulate", type=int, default=None,
                        help="CPU devices to simulate (default: the largest --devices; 0: "
                        "use the machine's own devices, e.g. GPUs)")
    args = parser.parse_args(argv)
    args.devices = [int(n) for n in args.devices.split(",") if n.strip()]
    if args.generations < 2:
        parser.error("--generations must be at least 2 (generation 0 is compilation)")
    return args


ARGS = parse_args()
_SIMULATE = max(ARGS.devices) if ARGS.simulate is None else ARGS.simulate
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("KERAS_BACKEND", "tensorflow") == "jax":
    if _SIMULATE:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={_SIMULATE}")
elif _SIMULATE:
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * _SIMULATE)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lrne  # noqa: E402
from keras_lrne import backend as lrne_backend  # noqa: E402
from keras_lrne import presets  # noqa: E402
from keras_lrne.distribution import PopulationParallel  # noqa: E402

VOCAB_SIZE = 2051


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def run_once(x, y, devices):
    model = presets.language_model("factorized", vocab_size=VOCAB_SIZE,
                                   sequence_length=x.shape[1])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    strategy = keras_lrne.strategies.GA(ARGS.population, ARGS.parents)
    distribution = None if devices is None else PopulationParallel(devices=devices)
    start = time.perf_counter()
    history = model.evolve(x, y, strategy=strategy, generations=ARGS.generations, seed=0,
                           verbose=0, distribution=distribution)
    return model, strategy, distribution, history.history, time.perf_counter() - start


def bytes_moved(model, strategy, distribution, x, y):
    """Per-device collective bytes of one generation's compiled programs (JAX), or the
    bytes sent to replicas (TensorFlow)."""
    bk = lrne_backend.get()
    run = model.evolution_run
    state = model.evolution_state
    population = list(state.population)
    member_bytes = sum(int(np.prod(s.shape)) * 4 for s in run.evolvable)
    info = {"population_bytes": member_bytes * ARGS.population,
            "survivor_bytes": member_bytes * ARGS.parents}
    if distribution is None:
        return info
    if bk.NAME == "jax":
        elites = np.arange(ARGS.parents, dtype=np.int32)
        children = np.resize(elites, ARGS.population - ARGS.parents).astype(np.int32)
        seeds = np.arange(ARGS.population - ARGS.parents, dtype=np.int32)
        reproduce, count = bk.collective_bytes(strategy._reproduce, population, elites,
                                               children, seeds)
        functions = run.functions
        batched = [keras.ops.convert_to_tensor(a.reshape(-1, run.batch_size, a.shape[1]))
                   for a in (x, y)]
        evaluate, eval_count = bk.collective_bytes(
            functions.evaluate_group, population, np.asarray(0, np.int32),
            list(functions.frozen_values()), list(functions.non_trainable_values()), *batched)
        info.update(reproduce_collective_bytes=reproduce, reproduce_collectives=count,
                    evaluate_collective_bytes=evaluate, evaluate_collectives=eval_count,
                    bytes_moved_per_generation=reproduce + evaluate,
                    how="measured: collectives of the compiled programs, per device")
    else:
        n = distribution.num_devices
        sent = info["population_bytes"] * (n - 1) // n
        info.update(bytes_moved_per_generation=sent,
                    how="computed: slices sent from the first device to the other replicas")
    return info


def main():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB_SIZE, (ARGS.sequences, ARGS.sequence_length + 1))
    x, y = tokens[:, :-1].astype("int32"), tokens[:, 1:].astype("int32")
    available = PopulationParallel().devices
    log(f"devices: {available}")
    counts = [None] + ARGS.devices
    rates = {c: [] for c in counts}
    losses, results = {}, {}
    for order in (counts, counts[::-1]):
        for devices in order:
            model, strategy, distribution, history, seconds = run_once(x, y, devices)
            rates[devices] += history["member_tokens_per_second"][1:]
            losses.setdefault(devices, history["loss"])
            if devices not in results:
                results[devices] = bytes_moved(model, strategy, distribution, x, y)
            log(f"devices={devices}: {seconds:.1f} s, member-tok/s "
                f"{[round(r) for r in history['member_tokens_per_second'][1:]]}")
    if 1 not in ARGS.devices:
        raise SystemExit("--devices must include 1 (the reference rate)")
    base = statistics.median(rates[1])
    table = []
    for devices in counts:
        rate = statistics.median(rates[devices])
        n = 1 if devices is None else devices
        row = {"devices": "none" if devices is None else devices,
               "member_tokens_per_second": rate,
               "vs_one_device": rate / base,
               "efficiency": rate / (n * base),
               "losses_match": bool(np.allclose(losses[devices], losses[None], rtol=1e-5)),
               **results[devices]}
        table.append(row)
        moved = row.get("bytes_moved_per_generation", 0)
        log(f"{row['devices']!s:>5}  {rate:>10.0f} member-tok/s  vs 1 device "
            f"{row['vs_one_device']:.3f}  efficiency {row['efficiency']:.3f}  moved/gen "
            f"{moved:,} B  (population {row['population_bytes']:,} B, survivors "
            f"{row['survivor_bytes']:,} B)  losses match: {row['losses_match']}")
    print(json.dumps({"backend": keras.config.backend(), "machine": platform.machine(),
                      "cpus": os.cpu_count(), "simulated_devices": _SIMULATE,
                      "available": available, "population": ARGS.population,
                      "rows": table}))


if __name__ == "__main__":
    main()

"""Throughput of the population engine on the paper's language model.

Measures, in one run on one machine, for the paper's TinyStories LM (`"factorized"`,
rank 4 / embed rank 32, and `"full"`):

- `member_tokens_per_second`: tokens scored per second by the population engine,
  summed over members (the `member_tokens_per_second` log of `model.evolve()`, i.e. the
  one compiled population evaluation call), median over generations;
- `vs_inference`: that rate divided by the tokens/s of plain inference of ONE model on the
  same total batch (P * N sequences), compiled by the same backend compiler in the same
  batch layout (target >= 0.9);
- `vs_naive_loop`: that rate divided by the member-tokens/s of what a user writes without
  this library: for each member, assign its weights to the model and call Keras'
  `model.evaluate` (target >= 20 on CPU);
- `overhead_share`: share of a generation's wall time spent outside the evaluation call
  (selection, mutation, bookkeeping), median over generations (target <= 0.1).

Measurements are interleaved: before every generation of `evolve()` (outside the timed
generation) one plain-inference call and a few naive-loop members are timed, on the
members the engine is about to evaluate. Generation 0 (compilation) is excluded. Ratios
are medians of the per-generation paired ratios.

The last line printed is one JSON object (factorized values at top level, the full
model's under `"full"`). Usage:

    python benchmarks/population_throughput.py                # default backend
    KERAS_BACKEND=jax python benchmarks/population_throughput.py
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import keras_lrne
from keras_lrne import backend as lrne_backend
from keras_lrne import evaluators, presets

VOCAB_SIZE = 2051


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=64,
                        help="population size P (default 64)")
    parser.add_argument("--parents", type=int, default=None,
                        help="GA truncation size (default P // 8, at least 1)")
    parser.add_argument("--sequences", type=int, default=16,
                        help="sequences per member N (default 16)")
    parser.add_argument("--sequence-length", type=int, default=128,
                        help="tokens per sequence T (default 128, the paper's)")
    parser.add_argument("--generations", type=int, default=10,
                        help="generations; the first (compilation) is excluded (default 10)")
    parser.add_argument("--variants", default="factorized,full",
                        help="comma-separated LM variants (default factorized,full)")
    parser.add_argument("--naive-members", type=int, default=4,
                        help="members timed in the naive loop per generation (default 4)")
    parser.add_argument("--naive-batch-size", type=int, default=None,
                        help="sequences per call in the naive loops (default: all N)")
    parser.add_argument("--population-batch-size", type=int, default=None,
                        help="engine chunk size C (default: automatic)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="engine data batch B (default: automatic)")
    parser.add_argument("--progress-steps", default=None,
                        help="comma-separated caps on the compiled calls (progress steps) per "
                        "generation, each benchmarked in this run, e.g. 1,16 (1: the whole "
                        "population in one call); default: the library's "
                        f"({evaluators.MAX_PROGRESS_STEPS})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.generations < 2:
        parser.error("--generations must be at least 2 (generation 0 is compilation)")
    if args.parents is None:
        args.parents = max(1, args.population // 8)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    return args


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def device_name():
    backend = keras.config.backend()
    cpu = f"cpu x{os.cpu_count()}"
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return cpu
        return f"{device.platform}:{device.device_kind}"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return cpu
    try:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    except Exception:  # pragma: no cover - depends on the driver
        name = "GPU"
    return f"gpu:{name}"


def make_data(num_sequences, sequence_length, seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB_SIZE, (num_sequences, sequence_length + 1), dtype=np.int64)
    tokens = tokens.astype("int32")
    return tokens[:, :-1], tokens[:, 1:]


def block(tensors):
    """Waits until `tensors` are computed (JAX dispatches asynchronously)."""
    if keras.config.backend() == "jax":
        import jax

        jax.block_until_ready(tensors)
    elif tensors:  # TensorFlow runs ops in order: a tiny host copy of the last one waits
        np.asarray(keras.ops.convert_to_numpy(keras.ops.ravel(tensors[-1])[:1]))


def median(values):
    return float(statistics.median(values)) if values else float("nan")


class Bench(keras.callbacks.Callback):
    """Times each generation, and plain inference / the naive loop between generations.

    Everything except the generation's own work happens at the start of
    `on_epoch_begin`, before the generation clock starts.
    """

    def __init__(self, args, x, y):
        super().__init__()
        self.args = args
        self.x, self.y = x, y
        self.bk = lrne_backend.get()
        self.rows = []  # one dict per measured generation
        self._pending = None
        self._infer = None
        self._naive_cursor = 0

    # -- plain inference -------------------------------------------------------------
    def _build_inference(self, run):
        """One model, P * N sequences, batches of C * B sequences, one compiled call."""
        model = self.model
        P, N = self.args.population, len(self.x)
        per_step = run.chunk_size * run.batch_size
        total = P * N
        steps = total // per_step
        if steps * per_step != total:  # engine pads the population; match its work
            steps = -(-total // per_step)
        reps = -(-steps * per_step // N)
        xs = np.tile(self.x, (reps, 1))[: steps * per_step]
        ys = np.tile(self.y, (reps, 1))[: steps * per_step]
        self._inf_x = keras.ops.convert_to_tensor(xs.reshape(steps, per_step, -1))
        self._inf_y = keras.ops.convert_to_tensor(ys.reshape(steps, per_step, -1))
        self._inf_tokens = steps * per_step * xs.shape[1]
        loss_fn = keras_lrne.population.mean_loss_fn(model.loss)
        kwargs = {"training": False}

        def infer(trainable, non_trainable, xb, yb):
            def body(k, total_loss):
                y_pred, _ = model.stateless_call(trainable, non_trainable, xb[k], **kwargs)
                return total_loss + loss_fn(yb[k], y_pred)

            total_loss = keras.ops.fori_loop(0, steps, body, keras.ops.zeros((), "float32"))
            return total_loss / steps

        self._infer = self.bk.compile(infer)

    def _member_values(self, population, member):
        """Trainable values of the whole model with `member`'s evolvable variables."""
        run = self.model.evolution_run
        values = [v.value for v in self.model.trainable_variables]
        for spec, tensor in zip(run.evolvable, population):
            values[spec.index] = tensor[member]
        return values

    def _time_inference(self, population):
        trainable = self._member_values(population, 0)
        non_trainable = [v.value for v in self.model.non_trainable_variables]
        start = time.perf_counter()
        loss = self.bk.to_numpy(self._infer(trainable, non_trainable, self._inf_x, self._inf_y))
        seconds = time.perf_counter() - start
        return seconds, float(loss)

    # -- naive loop ------------------------------------------------------------------
    def _time_naive(self, population_np, members, mode="call"):
        """Per-member seconds of a Python loop over members, as a user writes it.

        mode="call" (the issue's definition): assign the member's weights, then call the
        model on each batch and the loss on its output. mode="evaluate": assign, then
        Keras' own compiled `model.evaluate` (a stronger baseline, reported alongside).
        """
        run = self.model.evolution_run
        variables = self.model.trainable_variables
        batch = self.args.naive_batch_size or len(self.x)
        loss_fn = self.model.loss
        losses = []
        start = time.perf_counter()
        for member in members:
            for spec, values in zip(run.evolvable, population_np):
                variables[spec.index].assign(values[member])
            if mode == "evaluate":
                losses.append(self.model.evaluate(self.x, self.y, batch_size=batch, verbose=0))
                continue
            total, count = 0.0, 0
            for i in range(0, len(self.x), batch):
                y_pred = self.model(self.x[i : i + batch], training=False)
                total += float(keras.ops.convert_to_numpy(loss_fn(self.y[i : i + batch], y_pred)))
                count += 1
            losses.append(total / count)
        seconds = time.perf_counter() - start
        return seconds / len(members), [float(np.ravel(v)[0]) for v in losses]

    # -- callback hooks ----------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        run, state = self.model.evolution_run, self.model.evolution_state
        population = state.population
        population_np = [self.bk.to_numpy(v) for v in population]
        P = int(population_np[0].shape[0])
        if self._infer is None:
            self._build_inference(run)
            warm = time.perf_counter()
            self._time_inference(population)  # compile
            self.inference_compile_seconds = time.perf_counter() - warm
            warm = time.perf_counter()
            self._time_naive(population_np, [0])  # first eager call builds caches
            self._time_naive(population_np, [0], mode="evaluate")  # compiles Keras' test step
            self.naive_compile_seconds = time.perf_counter() - warm
        pending = {"generation": epoch}
        if epoch > 0:
            inf_seconds, inf_loss = self._time_inference(population)
            k = min(self.args.naive_members, P)
            members = [(self._naive_cursor + i) % P for i in range(k)]
            self._naive_cursor = (self._naive_cursor + k) % P
            naive_seconds, naive_losses = self._time_naive(population_np, members)
            evaluate_seconds, _ = self._time_naive(population_np, members, mode="evaluate")
            pending.update(inference_seconds=inf_seconds, inference_loss=inf_loss,
                           naive_member_seconds=naive_seconds, naive_members=members,
                           naive_losses=naive_losses,
                           evaluate_member_seconds=evaluate_seconds)
        # The engine reads frozen variables from the model: leave it as evolve() left it.
        for spec, values in zip(run.evolvable, population):
            self.model.trainable_variables[spec.index].assign(values[0])
        self._pending = pending
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        # Mutation may still be running asynchronously (JAX): it belongs to this generation.
        block(self.model.evolution_state.population)
        wall = time.perf_counter() - self._start
        row = self._pending
        P = self.args.population
        row["generation_seconds"] = wall
        row["eval_seconds"] = P / logs["member_evals_per_second"]
        row["member_tokens_per_second"] = logs["member_tokens_per_second"]
        losses = self.model.evolution_state.losses  # the losses of the members just evaluated
        if "naive_losses" in row:
            row["naive_loss_error"] = max(
                abs(losses[m] - v) for m, v in zip(row["naive_members"], row["naive_losses"])
            )
            row["inference_loss_error"] = abs(losses[0] - row["inference_loss"])
        self.rows.append(row)


def bench_variant(variant, args, x, y):
    T = x.shape[1]
    model = presets.language_model(variant, vocab_size=VOCAB_SIZE, sequence_length=T)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bench = Bench(args, x, y)
    strategy = keras_lrne.strategies.GA(population_size=args.population,
                                        num_parents=args.parents)
    start = time.perf_counter()
    model.evolve(x, y, strategy=strategy, generations=args.generations, seed=args.seed,
                 verbose=0, population_batch_size=args.population_batch_size,
                 batch_size=args.batch_size, callbacks=[bench])
    total = time.perf_counter() - start
    run = model.evolution_run
    rows = [r for r in bench.rows if r["generation"] > 0]
    N = len(x)
    engine_tps = [r["member_tokens_per_second"] for r in rows]
    inference_tps = [bench._inf_tokens / r["inference_seconds"] for r in rows]
    naive_tps = [N * T / r["naive_member_seconds"] for r in rows]
    evaluate_tps = [N * T / r["evaluate_member_seconds"] for r in rows]
    overhead = [(r["generation_seconds"] - r["eval_seconds"]) / r["generation_seconds"]
                for r in rows]
    result = {
        "variant": variant,
        "params": int(model.count_params()),
        "chunk": int(run.chunk_size),
        "batch": int(run.batch_size),
        "member_tokens_per_second": median(engine_tps),
        "vs_inference": median([e / i for e, i in zip(engine_tps, inference_tps)]),
        "vs_naive_loop": median([e / n for e, n in zip(engine_tps, naive_tps)]),
        "vs_evaluate_loop": median([e / n for e, n in zip(engine_tps, evaluate_tps)]),
        "overhead_share": median(overhead),
        "inference_tokens_per_second": median(inference_tps),
        "naive_member_tokens_per_second": median(naive_tps),
        "evaluate_member_tokens_per_second": median(evaluate_tps),
        "eval_seconds": median([r["eval_seconds"] for r in rows]),
        "generation_seconds": median([r["generation_seconds"] for r in rows]),
        "compile_generation_seconds": bench.rows[0]["generation_seconds"],
        "inference_compile_seconds": bench.inference_compile_seconds,
        "naive_first_member_seconds": bench.naive_compile_seconds,
        "naive_jit_compile": bool(getattr(model, "jit_compile", False)),
        "max_naive_loss_error": max(r["naive_loss_error"] for r in rows),
        "max_inference_loss_error": max(r["inference_loss_error"] for r in rows),
        "measured_generations": len(rows),
        "total_seconds": total,
        "per_generation": {
            "engine_tokens_per_second": engine_tps,
            "inference_tokens_per_second": inference_tps,
            "naive_member_tokens_per_second": naive_tps,
            "overhead_share": overhead,
        },
    }
    return result


def fmt_rate(value):
    return f"{value:,.0f}"


def print_report(args, device, results, load_before):
    backend = keras.config.backend()
    N, T, P = args.sequences, args.sequence_length, args.population
    print(f"population_throughput: backend={backend} device={device} "
          f"keras={keras.__version__} python={platform.python_version()}")
    print(f"P={P} members x N={N} sequences x T={T} tokens, GA parents={args.parents}, "
          f"{args.generations} generations (first excluded), "
          f"naive loop {args.naive_members} members/generation, medians over generations")
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"1-min load average before/after: {load_before:.2f}/{load_after:.2f} "
          f"(other work on the machine slows all three measurements alike)")
    print()
    header = (f"{'variant':<11}{'params':>8}{'C':>5}{'B':>4}{'member-tok/s':>14}"
              f"{'vs_inference':>14}{'vs_naive_loop':>15}{'overhead_share':>16}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['variant']:<11}{r['params']:>8}{r['chunk']:>5}{r['batch']:>4}"
              f"{fmt_rate(r['member_tokens_per_second']):>14}{r['vs_inference']:>14.3f}"
              f"{r['vs_naive_loop']:>14.1f}x{r['overhead_share']:>16.3f}")
    print("targets:" + " " * 34 + f"{'>= 0.9':>14}{'>= 20x (CPU)':>15}{'<= 0.1':>16}")
    print()
    for r in results:
        print(f"[{r['variant']}] inference {fmt_rate(r['inference_tokens_per_second'])} tok/s; "
              f"naive loop (set weights, call the model) "
              f"{fmt_rate(r['naive_member_tokens_per_second'])} member-tok/s; "
              f"model.evaluate loop {fmt_rate(r['evaluate_member_tokens_per_second'])} "
              f"member-tok/s = engine {r['vs_evaluate_loop']:.1f}x "
              f"(jit_compile={r['naive_jit_compile']}); "
              f"generation {r['generation_seconds']:.3f} s = evaluation "
              f"{r['eval_seconds']:.3f} s + other "
              f"{r['generation_seconds'] - r['eval_seconds']:.3f} s")
        print(f"[{r['variant']}] compile: engine generation 0 "
              f"{r['compile_generation_seconds']:.2f} s, inference "
              f"{r['inference_compile_seconds']:.2f} s, naive first member "
              f"{r['naive_first_member_seconds']:.2f} s; loss agreement with the engine: "
              f"naive {r['max_naive_loss_error']:.1e}, inference "
              f"{r['max_inference_loss_error']:.1e}; variant took {r['total_seconds']:.1f} s")
        per = r["per_generation"]
        print(f"[{r['variant']}] per generation: engine tok/s "
              + " ".join(fmt_rate(v) for v in per["engine_tokens_per_second"])
              + " | inference tok/s "
              + " ".join(fmt_rate(v) for v in per["inference_tokens_per_second"])
              + " | overhead "
              + " ".join(f"{v:.3f}" for v in per["overhead_share"]))
    print()
    keys = ("member_tokens_per_second", "vs_inference", "vs_naive_loop", "overhead_share",
            "vs_evaluate_loop")
    by_variant = {r["variant"]: {k: round(r[k], 4) for k in keys} for r in results}
    summary = {
        "backend": backend,
        "device": device,
        "population": P,
        "sequences": N,
        "sequence_length": T,
    }
    main = by_variant.get("factorized") or next(iter(by_variant.values()))
    summary.update(main)
    for variant, values in by_variant.items():
        if variant != "factorized":
            summary[variant] = values
    sys.stdout.flush()
    print(json.dumps(summary), flush=True)


def main(argv=None):
    args = parse_args(argv)
    device = device_name()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    x, y = make_data(args.sequences, args.sequence_length, args.seed)
    results = []
    steps = ([int(v) for v in args.progress_steps.split(",")] if args.progress_steps
             else [evaluators.MAX_PROGRESS_STEPS])
    default = evaluators.MAX_PROGRESS_STEPS
    for variant in args.variants:
        for cap in steps:
            log(f"benchmarking {variant} (at most {cap} compiled calls per generation) ...")
            evaluators.MAX_PROGRESS_STEPS = cap
            try:
                result = bench_variant(variant, args, x, y)
            finally:
                evaluators.MAX_PROGRESS_STEPS = default
            if len(steps) > 1:
                result["variant"] = f"{variant}/steps={cap}"
            results.append(result)
    print_report(args, device, results, load_before)


if __name__ == "__main__":
    main()

"""Low-rank populations at scale: full-rank noise vs EGGROLL low-rank noise vs LoRA.

Measures, in one run on one machine, the time and memory of one generation (`ask` plus
the population engine's `evaluate`) of OpenES on two models:

- `lm`: the paper's "full" TinyStories LM preset (`presets.language_model("full")`,
  vocabulary 2,051, `--sequence-length` tokens; 99,507 parameters at T=128);
- `mlp`: a 4-layer MLP of width 1,024 (`Dense(1024)` x 4, ReLU between, 1,024 inputs,
  mean squared error on random targets; 4.2 M parameters),

each in four settings:

- `full_rank`: `OpenES(P)`: every member's weights are materialised (dense noise);
- `rank1`, `rank4`: `OpenES(P, perturbation_rank=r)`: members are
  `genome.LowRankMembers`, never materialised; the layers compute `x @ mean` once for
  all members plus `(x @ A_i) @ B_i^T` per member;
- `lora4`: `enable_lora(4)` on every `Dense`/`EinsumDense` layer (the base kernels
  frozen and shared), `OpenES(P)` on the LoRA factors alone,

for populations `--populations` (256, 4,096 and 65,536) at one chunk size
(`--chunk-size`, members per vectorised call). OpenES runs with `mean_evaluation=False`,
so a generation evaluates exactly P members. Every member scores the same
`--sequences` sequences (`--mlp-samples` rows for the MLP) of random data in one batch.

Each (model, setting) runs in its own subprocess (`--worker`), populations in increasing
order: after a warm-up generation (compilation) `--repeats` generations are timed
(`ask`, then `evaluate` blocked on its losses; `--inference-repeats` for rank1 at the
inference population), medians reported; a generation longer than 10 s is timed once.
Failures are recorded, not raised:

- before a population is tried, the peak memory of its generation is estimated
  (`GENERATION_MEMORY_FACTOR` x P x numbers drawn per member x 4 bytes; the factor, 5.2
  on JAX and 3.8 on TensorFlow, was measured: `ask` holds several copies of the noise)
  and the population is skipped (`memory guard`) when that exceeds `--memory-limit-gb`
  (default: half the memory available at start, at most 12 GiB: the machine is
  shared);
- MemoryError and out-of-memory errors of the backend (ResourceExhausted) fail that
  population;
- once a generation takes longer than `--max-seconds`, larger populations of that
  setting are skipped (`time budget`);
- a subprocess that dies (killed by the OS) or outlives `--setting-timeout` fails the
  population it was on.

Peak evaluation memory (`peak_bytes`), the memory of the `evaluate` call alone (the
population it receives included, since it is live during the call):

- JAX: the compiled evaluation's memory analysis,
  `jax.jit(evaluate).lower(...).compile().memory_analysis()`: temp + argument + output
  bytes, of the very jitted function `PopulationFunctions.evaluate` calls (arguments:
  the population, i.e. the factors of `LowRankMembers` or the dense members, plus the
  shared weights and data; temp: the program's working memory);
- TensorFlow: the peak of TensorFlow's CPU allocator during the call
  (`tf.config.experimental.reset_memory_stats("CPU:0")` after `ask`, then
  `get_memory_info("CPU:0")["peak"]`), minus the allocator's bytes in use after the
  model, data and `PopulationFunctions` were built. Resident memory cannot isolate the
  call on TensorFlow: its allocator keeps what `ask` freed (after a full-rank `ask` of
  P=4,096 the LM's process stayed 4.6 GB above the baseline once everything was freed);
- `peak_rss_bytes` (both backends): the peak resident memory of a whole generation
  (`ask` + evaluate): the peak RSS (`VmHWM`, reset through `/proc/self/clear_refs`
  after glibc's free memory was returned with `malloc_trim`) minus the RSS after the
  model, data and `PopulationFunctions` were built, before any population. Populations
  of one setting share a process, in increasing order: memory an allocator kept from an
  earlier, smaller population can only raise a later figure.

`vs_inference`: member-tokens/s of `rank1` at P=`--inference-population` (4,096), from
its evaluation call, divided by the tokens/s of plain inference of the base model (its
mean weights) on the same total batch (P x sequences), compiled by the same backend
compiler in the engine's batch layout (steps of `chunk x sequences` sequences in one
compiled loop, the loss included, as in `population_throughput.py`); the two are timed
alternately in the rank-1 subprocess (`--inference-repeats` pairs), and the ratio is the
median of the paired ratios. `vs_inference_generation` uses the whole
generation (`ask` + evaluate) instead.

The last line printed is one JSON object: the LM's values at the top level (`vs_inference`,
`peak_bytes`, `population_65536_ok`, `full_rank_over_low_rank_seconds`, ...), the MLP's
under `"mlp"`. Usage:

    python benchmarks/low_rank_population.py                  # TensorFlow (default)
    KERAS_BACKEND=jax python benchmarks/low_rank_population.py
    python benchmarks/low_rank_population.py --help
"""

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VOCAB_SIZE = 2051
MLP_WIDTH = 1024
MLP_LAYERS = 4
SETTINGS = ("full_rank", "rank1", "rank4", "lora4")
MODELS = ("lm", "mlp")
#: Peak resident memory of a generation (`ask` + evaluate) over the population's bytes,
#: measured at P=65,536 on the 2-core CPU (LM rank 1 and LoRA 4, MLP rank 1): `ask`
#: holds several copies of the noise at once (JAX 5.1, TensorFlow 3.2-3.7).
GENERATION_MEMORY_FACTOR = {"jax": 5.2, "tensorflow": 3.8}
#: A timed generation longer than this is not repeated.
LONG_GENERATION_SECONDS = 10.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--populations", default="256,4096,65536",
                        help="comma-separated population sizes P (default 256,4096,65536)")
    parser.add_argument("--chunk-size", type=int, default=128,
                        help="members per vectorised call C (default 128)")
    parser.add_argument("--sequences", type=int, default=1,
                        help="LM sequences each member scores (default 1)")
    parser.add_argument("--sequence-length", type=int, default=16,
                        help="LM tokens per sequence T (default 16)")
    parser.add_argument("--mlp-samples", type=int, default=1,
                        help="MLP rows each member scores (default 1)")
    parser.add_argument("--mlp-width", type=int, default=MLP_WIDTH,
                        help=f"MLP width and input size (default {MLP_WIDTH})")
    parser.add_argument("--models", default="lm,mlp",
                        help="comma-separated models: lm, mlp (default both)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="comma-separated settings (default full_rank,rank1,rank4,lora4)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed generations per population after the warm-up (default 2)")
    parser.add_argument("--inference-repeats", type=int, default=5,
                        help="timed generations, each followed by one plain-inference call, "
                        "of rank1 at the inference population (default 5)")
    parser.add_argument("--inference-population", type=int, default=4096,
                        help="P at which vs_inference and the time ratio are taken "
                        "(default 4096)")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="once one generation takes longer, larger populations of that "
                        "setting are skipped (default 30)")
    parser.add_argument("--setting-timeout", type=float, default=300.0,
                        help="wall-clock limit of one (model, setting) subprocess in seconds "
                        "(default 300)")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="skip a population whose generation would take more memory "
                        "(default: half the available memory, at most 12)")
    parser.add_argument("--seed", type=int, default=0)
    # Internal: one (model, setting) in this process.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="lm", help=argparse.SUPPRESS)
    parser.add_argument("--setting", default="rank1", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.populations = sorted(int(p) for p in args.populations.split(",") if p.strip())
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for m in args.models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}: expected one of {MODELS}")
    for s in args.settings:
        if s not in SETTINGS:
            parser.error(f"unknown setting {s!r}: expected one of {SETTINGS}")
    if args.memory_limit_gb is None:
        args.memory_limit_gb = min(12.0, 0.5 * available_bytes() / 2**30)
    return args


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def median(values):
    return float(statistics.median(values)) if values else float("nan")


# -- resident memory ---------------------------------------------------------------------
def _status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes():
    return _status_kib("VmRSS")


def reset_peak_rss():
    """Resets the peak RSS (`VmHWM`) to the current RSS; False where Linux refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory():
    """Returns the C allocator's free memory to the OS (glibc `malloc_trim`), so the
    resident memory counts live data only; a no-op elsewhere."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_bytes():
    value = _status_kib("VmHWM")
    if value is None:  # no /proc: the process' lifetime peak
        import resource

        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return value


# -- TensorFlow's CPU allocator ----------------------------------------------------------
def _tf_memory_info():
    import keras

    if keras.config.backend() != "tensorflow":
        return None
    import tensorflow as tf

    try:
        return tf.config.experimental.get_memory_info("CPU:0")
    except (ValueError, RuntimeError):
        return None


def tf_reset_peak():
    if _tf_memory_info() is not None:
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("CPU:0")


def tf_peak():
    info = _tf_memory_info()
    return None if info is None else int(info["peak"])


def tf_current():
    info = _tf_memory_info()
    return None if info is None else int(info["current"])


# -- worker: one (model, setting) ----------------------------------------------------------
def emit(record):
    print(json.dumps(record), flush=True)


def device_name():
    import keras

    cpu = f"cpu x{os.cpu_count()}"
    if keras.config.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return cpu if device.platform == "cpu" else f"{device.platform}:{device.device_kind}"
    import tensorflow as tf

    return "gpu" if tf.config.list_physical_devices("GPU") else cpu


def backend_version():
    import keras

    if keras.config.backend() == "jax":
        import jax

        return jax.__version__
    import tensorflow as tf

    return tf.__version__


def build_model(args):
    """The model, its data `(x, y)` (unbatched) and the tokens (rows) per member."""
    import keras
    import numpy as np

    from keras_lrne import presets

    rng = np.random.default_rng(args.seed)
    if args.model == "lm":
        T = args.sequence_length
        model = presets.language_model("full", vocab_size=VOCAB_SIZE, sequence_length=T)
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        tokens = rng.integers(0, VOCAB_SIZE, (args.sequences, T + 1)).astype("int32")
        return model, tokens[:, :-1], tokens[:, 1:], args.sequences * T
    width = args.mlp_width
    layers = [keras.Input((width,))]
    for i in range(MLP_LAYERS):
        last = i == MLP_LAYERS - 1
        layers.append(keras.layers.Dense(width, activation=None if last else "relu",
                                         name=f"dense_{i}"))
    model = keras.Sequential(layers, name="mlp")
    model.compile(loss="mse")
    x = rng.normal(size=(args.mlp_samples, width)).astype("float32")
    y = rng.normal(size=(args.mlp_samples, width)).astype("float32")
    return model, x, y, args.mlp_samples


def enable_lora(model, rank):
    """`enable_lora(rank)` on every Dense / EinsumDense layer; returns their count."""
    import keras

    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
            layer.enable_lora(rank)
            count += 1
    return count


def is_out_of_memory(error):
    if isinstance(error, MemoryError):
        return True
    text = f"{type(error).__name__}: {error}"
    return any(s in text for s in ("ResourceExhausted", "RESOURCE_EXHAUSTED", "Out of memory",
                                   "out of memory", "OOM", "bad_alloc"))


class Inference:
    """Plain inference of the model (its current weights) on `P * N` sequences in the
    engine's layout: `P / C` steps of `C * N` sequences, one compiled loop, mean loss."""

    def __init__(self, model, x, y, population, chunk):
        import keras
        import numpy as np

        from keras_lrne import backend as lrne_backend
        from keras_lrne import population as pop

        self.bk = lrne_backend.get()
        N = len(x)
        chunk = min(chunk, population)
        steps = -(-population // chunk)
        per_step = chunk * N
        xs = np.tile(x, (steps * chunk,) + (1,) * (x.ndim - 1))
        ys = np.tile(y, (steps * chunk,) + (1,) * (y.ndim - 1))
        self.x = keras.ops.convert_to_tensor(xs.reshape((steps, per_step) + x.shape[1:]))
        self.y = keras.ops.convert_to_tensor(ys.reshape((steps, per_step) + y.shape[1:]))
        self.rows = steps * per_step
        loss_fn = pop.mean_loss_fn(model.loss, model)

        def infer(trainable, non_trainable, xb, yb):
            def body(k, total):
                y_pred, _ = model.stateless_call(trainable, non_trainable, xb[k],
                                                 training=False)
                return total + loss_fn(yb[k], y_pred)

            total = keras.ops.fori_loop(0, steps, body, keras.ops.zeros((), "float32"))
            return total / steps

        self._fn = self.bk.compile(infer)
        self._trainable = [v.value for v in model.trainable_variables]
        self._non_trainable = [v.value for v in model.non_trainable_variables]

    def __call__(self):
        start = time.perf_counter()
        loss = float(self.bk.to_numpy(self._fn(self._trainable, self._non_trainable,
                                               self.x, self.y)))
        return time.perf_counter() - start, loss


def timed_generation(bk, strategy, fns, tail, state):
    """One generation (`ask`, then `evaluate` blocked on its losses).

    Returns `(state, population, losses, run)`, `run` holding the seconds of `ask` and of
    the evaluation, the generation's peak RSS and TensorFlow's allocator peaks.
    """
    import numpy as np

    release_free_memory()
    reset_peak_rss()
    tf_reset_peak()
    start = time.perf_counter()
    population, state = strategy.ask(state)
    bk.block(population)
    asked = time.perf_counter()
    ask_peak = tf_peak()
    tf_reset_peak()
    losses = np.asarray(bk.to_numpy(fns.evaluate(population, *tail)))
    done = time.perf_counter()
    return state, population, losses, {
        "ask": asked - start, "eval": done - asked, "rss": peak_rss_bytes(),
        "ask_alloc": ask_peak, "eval_alloc": tf_peak()}


def jax_memory_analysis(fns, population, args_tail):
    """temp + argument + output bytes of the compiled evaluation (JAX), or None."""
    from keras_lrne import population as pop

    compiled = None
    for cell in fns.evaluate.__closure__ or ():
        if hasattr(cell.cell_contents, "lower"):
            compiled = cell.cell_contents
    if compiled is None:
        return None
    analysis = compiled.lower(*pop.split_population(population), *args_tail).compile()
    analysis = analysis.memory_analysis()
    if analysis is None:
        return None
    parts = {k: int(getattr(analysis, f"{k}_size_in_bytes", 0) or 0)
             for k in ("temp", "argument", "output", "alias", "generated_code")}
    parts["total"] = parts["temp"] + parts["argument"] + parts["output"]
    return parts


def worker(args):
    import keras
    import numpy as np

    from keras_lrne import backend as lrne_backend
    from keras_lrne import genome
    from keras_lrne import population as pop
    from keras_lrne.strategies import OpenES

    backend = keras.config.backend()
    bk = lrne_backend.get()
    model, x, y, tokens_per_member = build_model(args)
    lora_layers = enable_lora(model, 4) if args.setting == "lora4" else 0
    rank = {"rank1": 1, "rank4": 4}.get(args.setting)
    specs = genome.collect_variable_specs(model)
    evolvable = [s for s in specs if s.evolvable]
    # Numbers drawn per member (what ask produces per member).
    numbers = 0
    for s in evolvable:
        shape = tuple(s.shape)
        if rank and len(shape) >= 2:
            numbers += (int(np.prod(shape[:-1])) + shape[-1]) * rank
        else:
            numbers += int(np.prod(shape))
    B = len(x)
    xb, yb = pop.batch_data(x, B), pop.batch_data(y, B)
    emit({"event": "model", "params": int(model.count_params()),
          "evolved_params": int(sum(np.prod(s.shape) for s in evolvable)),
          "numbers_per_member": int(numbers), "lora_layers": lora_layers,
          "tokens_per_member": tokens_per_member, "backend": backend,
          "device": device_name(), "keras": keras.__version__,
          "backend_version": backend_version()})
    limit = args.memory_limit_gb * 2**30
    baseline = None
    skip_reason = None
    for P in args.populations:
        record = {"event": "result", "population": P}
        estimate = int(GENERATION_MEMORY_FACTOR.get(backend, 5.2) * P * numbers * 4)
        record["estimated_generation_bytes"] = estimate
        if skip_reason:
            record.update(ok=False, failure=skip_reason)
            emit(record)
            continue
        if estimate > limit:
            record.update(ok=False, failure=(
                f"memory guard: a generation would take about {estimate / 2**30:.1f} GiB > "
                f"--memory-limit-gb {args.memory_limit_gb:.1f}"))
            emit(record)
            continue
        emit({"event": "start", "population": P})
        try:
            chunk = min(args.chunk_size, P)
            strategy = OpenES(P, perturbation_rank=rank, mean_evaluation=False)
            state = strategy.init(specs, args.seed)
            fns = pop.PopulationFunctions(model, specs, model.loss, chunk_size=chunk)
            frozen, non_trainable = fns.frozen_values(), fns.non_trainable_values()
            xt, yt = pop.to_tensors(xb), pop.to_tensors(yb)
            if baseline is None:
                release_free_memory()
                baseline = rss_bytes()
                alloc_baseline = tf_current()

            tail = (frozen, non_trainable, xt, yt)
            generation = functools.partial(timed_generation, bk, strategy, fns, tail)
            start = time.perf_counter()
            state, population, losses, _ = generation(state)
            record["warmup_seconds"] = time.perf_counter() - start
            # What the evaluation receives: a recipe's shared weights and per-member
            # records (a list of tensors' members, for a population of your own).
            members = (population.shared + list(population.records)
                       if isinstance(population, genome.PopulationRecipe)
                       else keras.tree.flatten(pop.split_population(population)[0]))
            record["population_bytes"] = int(sum(
                int(np.prod(t.shape)) * np.dtype(keras.backend.standardize_dtype(t.dtype)).itemsize
                for t in members))
            del members
            inference = None
            if args.setting == "rank1" and args.inference_population == P:
                # Plain inference of the search distribution's mean (the base model the
                # members perturb).
                variables = model.trainable_variables
                for spec, value in zip(evolvable, state.mean):
                    variables[spec.index].assign(value)
                inference = Inference(model, x, y, P, chunk)
                start = time.perf_counter()
                inference()
                record["inference_compile_seconds"] = time.perf_counter() - start
            if backend == "jax":
                start = time.perf_counter()
                record["memory_analysis"] = jax_memory_analysis(
                    fns, population, (frozen, non_trainable, xt, yt))
                record["memory_analysis_seconds"] = time.perf_counter() - start
            del population
            runs, infs = [], []
            repeats = args.repeats if inference is None else args.inference_repeats
            for _ in range(max(1, repeats)):
                state, population, losses, run = generation(state)
                del population
                runs.append(run)
                if inference is not None:
                    seconds, loss = inference()
                    infs.append(seconds)
                    record["inference_loss"] = loss
                if run["ask"] + run["eval"] > LONG_GENERATION_SECONDS:
                    break
            asks = [r["ask"] for r in runs]
            evals = [r["eval"] for r in runs]
            gen = [r["ask"] + r["eval"] for r in runs]
            record.update(
                ok=True, repeats=len(gen), ask_seconds=median(asks),
                eval_seconds=median(evals), generation_seconds=median(gen),
                generation_seconds_all=gen,
                member_tokens_per_second=P * tokens_per_member / median(evals),
                member_tokens_per_second_generation=P * tokens_per_member / median(gen),
                peak_rss=max(r["rss"] for r in runs) - baseline, baseline_rss=baseline,
                mean_loss=float(np.mean(losses)),
                finite_losses=bool(np.all(np.isfinite(losses))),
            )
            if backend == "tensorflow":
                record["eval_peak_alloc"] = max(r["eval_alloc"] for r in runs) - alloc_baseline
                record["ask_peak_alloc"] = max(r["ask_alloc"] for r in runs) - alloc_baseline
            if inference is not None:
                record["inference_seconds"] = median(infs)
                record["inference_tokens_per_second"] = (
                    inference.rows * (tokens_per_member // len(x)) / median(infs))
                record["vs_inference"] = median(
                    [i / e for i, e in zip(infs, evals)])
                record["vs_inference_generation"] = median(
                    [i / g for i, g in zip(infs, gen)])
            if min(gen) > args.max_seconds:
                skip_reason = (f"time budget: P={P} took {min(gen):.1f} s per generation > "
                               f"--max-seconds {args.max_seconds:g}")
        except Exception as error:  # recorded, not raised
            record.update(ok=False, failure=f"{type(error).__name__}: {str(error)[:300]}",
                          out_of_memory=is_out_of_memory(error))
            skip_reason = f"after failure at P={P}"
        emit(record)
    return 0


# -- orchestrator ------------------------------------------------------------------------
def run_setting(args, model, setting):
    """Runs one (model, setting) worker; returns (model info, {P: record})."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model,
               "--setting", setting,
               "--populations", ",".join(map(str, args.populations)),
               "--chunk-size", str(args.chunk_size), "--sequences", str(args.sequences),
               "--sequence-length", str(args.sequence_length),
               "--mlp-samples", str(args.mlp_samples), "--mlp-width", str(args.mlp_width),
               "--repeats", str(args.repeats),
               "--inference-population", str(args.inference_population),
               "--inference-repeats", str(args.inference_repeats),
               "--max-seconds", str(args.max_seconds),
               "--memory-limit-gb", str(args.memory_limit_gb), "--seed", str(args.seed)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=args.setting_timeout)
        out, err, rc, timed_out = done.stdout, done.stderr, done.returncode, False
    except subprocess.TimeoutExpired as error:
        out = error.stdout.decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        err = error.stderr.decode() if isinstance(error.stderr, bytes) else (error.stderr or "")
        rc, timed_out = None, True
    info, results, started = {}, {}, None
    for line in out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        event = record.pop("event", None)
        if event == "model":
            info = record
        elif event == "start":
            started = record["population"]
        elif event == "result":
            results[record["population"]] = record
            started = None
    reason = (f"setting timed out after {args.setting_timeout:g} s" if timed_out
              else f"worker exited with rc {rc}" if rc else None)
    if reason and not timed_out and rc is not None and rc < 0:
        reason += " (killed by a signal: out of memory?)"
    for P in args.populations:
        if P not in results:
            failure = reason or "no result"
            if started is not None and started != P:
                failure = f"not run: {reason or 'worker stopped'}"
            results[P] = {"population": P, "ok": False, "failure": failure}
    if reason or any(not r.get("ok") and "memory guard" not in r.get("failure", "")
                     and "time budget" not in r.get("failure", "") for r in results.values()):
        tail = (err or "")[-800:]
        if tail:
            log(f"[{model}/{setting}] stderr tail:\n{tail}")
    info["wall_seconds"] = time.perf_counter() - start
    return info, results


def eval_peak(record):
    """Peak evaluation memory of a result: the compiled program's memory analysis (JAX),
    TensorFlow's CPU allocator peak, else the generation's peak RSS."""
    analysis = record.get("memory_analysis")
    if analysis:
        return analysis["total"]
    if record.get("eval_peak_alloc") is not None:
        return record["eval_peak_alloc"]
    return record["peak_rss"]


def summarize(args, model, infos, table):
    """The JSON values of one model."""
    P0 = args.inference_population
    peak, peak_rss, seconds, eval_seconds, ask_seconds, rates, failures = ({} for _ in range(7))
    population_bytes, ask_peak = {}, {}
    for setting, results in table.items():
        for P, r in sorted(results.items()):
            key = f"{setting}@{P}"
            if not r.get("ok"):
                failures[key] = r.get("failure", "failed")
                continue
            peak[key] = eval_peak(r)
            peak_rss[key] = r["peak_rss"]
            population_bytes[key] = r.get("population_bytes")
            if r.get("ask_peak_alloc") is not None:
                ask_peak[key] = r["ask_peak_alloc"]
            seconds[key] = round(r["generation_seconds"], 4)
            eval_seconds[key] = round(r["eval_seconds"], 4)
            ask_seconds[key] = round(r["ask_seconds"], 4)
            rates[key] = round(r["member_tokens_per_second"])
    low = table.get("rank1", {})
    full = table.get("full_rank", {})
    ratios = {}
    for P in args.populations:
        f, lr = full.get(P, {}), low.get(P, {})
        if f.get("ok") and lr.get("ok"):
            ratios[str(P)] = round(f["generation_seconds"] / lr["generation_seconds"], 3)
        elif lr.get("ok") and f:
            ratios[str(P)] = "full_rank failed"
    r0 = low.get(P0, {})
    big = low.get(max(args.populations), {})
    summary = {
        "vs_inference": round(r0["vs_inference"], 4) if "vs_inference" in r0 else None,
        "peak_bytes": peak,
        f"population_{max(args.populations)}_ok": bool(big.get("ok")),
        # A number, or None where either failed (see "failed").
        "full_rank_over_low_rank_seconds": (ratios.get(str(P0)) if isinstance(
            ratios.get(str(P0)), float) else None),
        "full_rank_over_low_rank_seconds_by_population": ratios,
        "vs_inference_generation": (round(r0["vs_inference_generation"], 4)
                                    if "vs_inference_generation" in r0 else None),
        "inference_tokens_per_second": (round(r0["inference_tokens_per_second"])
                                        if "inference_tokens_per_second" in r0 else None),
        "seconds_per_generation": seconds,
        "eval_seconds": eval_seconds,
        "ask_seconds": ask_seconds,
        "member_tokens_per_second": rates,
        "peak_rss_bytes": peak_rss,
        "population_bytes": population_bytes,
        "ask_peak_bytes": ask_peak,
        "failed": failures,
        "params": {s: i.get("params") for s, i in infos.items()},
        "numbers_per_member": {s: i.get("numbers_per_member") for s, i in infos.items()},
    }
    if max(args.populations) != 65536:
        summary["population_65536_ok"] = bool(low.get(65536, {}).get("ok"))
    memory_ratio = {}
    for setting in table:
        small, large = min(args.populations), max(args.populations)
        a, b = f"{setting}@{small}", f"{setting}@{large}"
        if a in peak and b in peak and peak[a]:
            memory_ratio[setting] = round(peak[b] / peak[a], 2)
    summary["peak_bytes_ratio_largest_over_smallest"] = memory_ratio
    return summary


def fmt_bytes(n):
    return f"{n / 2**20:,.0f} MiB" if n is not None else "-"


def print_report(args, device, backend, all_infos, all_tables, summaries, load_before):
    versions = next((i for t in all_infos.values() for i in t.values() if "keras" in i), {})
    print(f"low_rank_population: backend={backend} device={device} "
          f"keras={versions.get('keras')} {backend}={versions.get('backend_version')} "
          f"python={platform.python_version()}")
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"chunk C={args.chunk_size}; LM: {args.sequences} x {args.sequence_length} tokens "
          f"per member; MLP: {args.mlp_samples} rows per member; {args.repeats} timed "
          f"generations (medians); memory guard {args.memory_limit_gb:.1f} GiB; "
          f"1-min load before/after {load_before:.2f}/{load_after:.2f}")
    for model, table in all_tables.items():
        infos = all_infos[model]
        print()
        print(f"[{model}] " + ", ".join(
            f"{s}: {i.get('params', '?')} params, {i.get('numbers_per_member', '?')} numbers "
            f"drawn per member, {i.get('wall_seconds', 0):.0f} s" for s, i in infos.items()))
        header = (f"{'setting':<10}{'P':>7}{'s/gen':>9}{'ask s':>8}{'eval s':>9}"
                  f"{'member-tok/s':>14}{'peak':>12}{'peak RSS':>12}  note")
        print(header)
        print("-" * len(header))
        for setting, results in table.items():
            for P, r in sorted(results.items()):
                if not r.get("ok"):
                    print(f"{setting:<10}{P:>7}{'failed':>9}{'':>8}{'':>9}{'':>14}{'':>12}"
                          f"{'':>12}  {r.get('failure', '')}")
                    continue
                analysis = r.get("memory_analysis")
                peak = eval_peak(r)
                note = ""
                if "vs_inference" in r:
                    note = (f"inference {r['inference_tokens_per_second']:,.0f} tok/s, "
                            f"vs_inference {r['vs_inference']:.3f}")
                if analysis:
                    note += (f" [temp {fmt_bytes(analysis['temp'])}, args "
                             f"{fmt_bytes(analysis['argument'])}]")
                print(f"{setting:<10}{P:>7}{r['generation_seconds']:>9.3f}"
                      f"{r['ask_seconds']:>8.3f}{r['eval_seconds']:>9.3f}"
                      f"{r['member_tokens_per_second']:>14,.0f}{fmt_bytes(peak):>12}"
                      f"{fmt_bytes(r['peak_rss']):>12}  {note}")
        s = summaries[model]
        print(f"[{model}] vs_inference {s['vs_inference']}; full_rank/rank1 s per generation "
              f"{s['full_rank_over_low_rank_seconds_by_population']}; peak ratio "
              f"largest/smallest P {s['peak_bytes_ratio_largest_over_smallest']}")


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    # The backend is imported by the workers only (this process stays small).
    backend = None
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    all_infos, all_tables, summaries = {}, {}, {}
    device = None
    for model in args.models:
        infos, table = {}, {}
        for setting in args.settings:
            log(f"benchmarking {model}/{setting} at P={args.populations} ...")
            info, results = run_setting(args, model, setting)
            infos[setting], table[setting] = info, results
            device = device or info.get("device")
            backend = backend or info.get("backend")
        all_infos[model], all_tables[model] = infos, table
        summaries[model] = summarize(args, model, infos, table)
    print_report(args, device, backend, all_infos, all_tables, summaries, load_before)
    head = args.models[0]
    result = {"backend": backend, "device": device, "chunk_size": args.chunk_size,
              "populations": args.populations, "sequences": args.sequences,
              "sequence_length": args.sequence_length, "mlp_samples": args.mlp_samples,
              "mlp_width": args.mlp_width,
              "model": head}
    result.update(summaries[head])
    for model in args.models[1:]:
        result[model] = summaries[model]
    print()
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hyperscale: a member is its recipe. Time and memory of whole generations at large P.

Each built-in strategy's `ask` returns a `keras_lrne.genome.PopulationRecipe` (shared
weights plus per-member seeds), and the compiled evaluation expands one chunk of members
at a time inside the call, so a generation's memory should not grow with the population.
This script measures, in one run on one machine, whole generations (`ask`, the
evaluation of every member, `tell`) on the paper's "full" LM preset (vocabulary 2,051,
`--sequence-length` tokens, `--sequences` sequence per member; 99,507 parameters at
T=128) in these settings:

- `rank1`, `rank4`: `OpenES(P, perturbation_rank=r, mean_evaluation=False)`;
- `lora4`: `enable_lora(4)` on every Dense/EinsumDense layer, `OpenES(P)` on the
  adapters;
- `full_rank`: `OpenES(P)`, full-rank noise on every weight;
- `ga`: `GA(P, 16)` in a steady-state generation (population 1: survivors plus each
  child's parent position and seed; the initial population is P independent
  initialisations drawn on the host, chunk by chunk, and is not what is timed here);
- `ga_materialized`: the same GA generation with the population materialised first
  (`recipe.materialize()` handed to the engine as dense tensors: the path before
  recipes), the baseline the GA is compared with.

Each setting runs in its own subprocess, populations in increasing order. Per population:
one warm-up generation (compilation: `first_generation_seconds`), then `--repeats`
timed generations (one if a generation exceeds 10 s). `peak_rss_bytes` is the peak
resident memory of a timed generation (VmHWM, reset through /proc/self/clear_refs after
`malloc_trim`) minus the process's resident memory once the model, data and population
functions were built (before any population). `peak_bytes_ratio` divides the value at
the largest population that ran (65,536 by default) by the value at P=256. A population
whose materialised baseline would exceed `--memory-limit-gb` is skipped (memory guard),
as are larger ones after a failure.

`vs_inference_generation` (rank1 at `--inference-population`, 4,096): member-tokens/s of
a whole generation over plain batched inference of the base model on the same total
batch (the `Inference` of `low_rank_population.py`: the engine's layout, one compiled
loop), median of paired runs; `vs_inference`: the evaluation call alone.

The last line printed is one JSON object with the keys of the issue's table
(`vs_inference_generation`, `vs_inference`, `peak_bytes_ratio`,
`population_262144_ok`, `ga_population_16384_ok`) and every setting's rows. Usage:

    python benchmarks/hyperscale.py                     # TensorFlow (default)
    KERAS_BACKEND=jax python benchmarks/hyperscale.py
    python benchmarks/hyperscale.py --settings rank1 --populations 256,4096
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import low_rank_population as lrp

SETTINGS = ("rank1", "rank4", "lora4", "full_rank", "ga", "ga_materialized")
POPULATIONS = {"rank1": "256,4096,65536,262144", "rank4": "256,4096,65536",
               "lora4": "256,4096,65536", "full_rank": "256,4096",
               "ga": "256,4096,16384,65536", "ga_materialized": "256,4096,16384"}
GA_PARENTS = 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated settings (default {','.join(SETTINGS)})")
    parser.add_argument("--populations", default=None,
                        help="comma-separated P for every setting (default: per setting, "
                        f"{POPULATIONS})")
    parser.add_argument("--chunk-size", type=int, default=128,
                        help="members per vectorised call (default 128)")
    parser.add_argument("--sequences", type=int, default=1,
                        help="sequences each member scores (default 1)")
    parser.add_argument("--sequence-length", type=int, default=16,
                        help="tokens per sequence (default 16)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed generations per population (default 3)")
    parser.add_argument("--inference-repeats", type=int, default=5,
                        help="paired generation/inference runs of rank1 (default 5)")
    parser.add_argument("--inference-population", type=int, default=4096)
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="skip a population whose materialised members would take more "
                        "(default: half the available memory, at most 12)")
    parser.add_argument("--setting-timeout", type=float, default=1800.0,
                        help="seconds one setting's subprocess may take (default 1800)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", default="rank1", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in args.settings:
        if s not in SETTINGS:
            parser.error(f"unknown setting {s!r}: expected one of {SETTINGS}")
    if args.memory_limit_gb is None:
        args.memory_limit_gb = min(12.0, 0.5 * lrp.available_bytes() / 2**30)
    return args


def populations(args, setting):
    text = args.populations or POPULATIONS[setting]
    return sorted(int(p) for p in text.split(",") if p.strip())


def make_strategy(setting, size):
    from keras_lrne.strategies import GA, OpenES

    if setting.startswith("ga"):
        return GA(size, GA_PARENTS)
    rank = {"rank1": 1, "rank4": 4}.get(setting)
    return OpenES(size, perturbation_rank=rank, mean_evaluation=False)


def timed_generation(bk, strategy, functions, tail, setting, baseline, state):
    """One whole generation (`ask`, the evaluation of every member, `tell`): returns
    `(state, losses, seconds and peak resident memory over `baseline`)`."""
    import numpy as np

    from keras_lrne import genome

    lrp.release_free_memory()
    lrp.reset_peak_rss()
    start = time.perf_counter()
    population, state = strategy.ask(state)
    if setting == "ga_materialized":
        population = genome.materialize(population)
    bk.block(population if isinstance(population, list) else population.shared)
    asked = time.perf_counter()
    losses = np.asarray(bk.to_numpy(functions.evaluate(population, *tail)))
    evaluated = time.perf_counter()
    del population
    state, _ = strategy.tell(state, losses)
    bk.block(strategy.best(state))
    done = time.perf_counter()
    return state, losses, {"ask": asked - start, "eval": evaluated - asked,
                           "generation": done - start,
                           "rss": lrp.peak_rss_bytes() - baseline}


def worker(args):
    import keras
    import numpy as np

    from keras_lrne import backend as lrne_backend
    from keras_lrne import genome
    from keras_lrne import population as pop

    bk = lrne_backend.get()
    setting = args.setting
    model_args = argparse.Namespace(model="lm", seed=args.seed, sequences=args.sequences,
                                    sequence_length=args.sequence_length)
    model, x, y, tokens_per_member = lrp.build_model(model_args)
    if setting == "lora4":
        lrp.enable_lora(model, 4)
    specs = genome.collect_variable_specs(model)
    evolvable = [s for s in specs if s.evolvable]
    member_bytes = 4 * int(sum(np.prod(s.shape) for s in evolvable))
    xt, yt = (pop.to_tensors(pop.batch_data(a, len(x))) for a in (x, y))
    lrp.emit({"event": "model", "setting": setting, "backend": keras.config.backend(),
              "device": lrp.device_name(), "params": int(model.count_params()),
              "evolved_bytes_per_member": member_bytes,
              "tokens_per_member": tokens_per_member})
    baseline = None
    failed = None
    for size in populations(args, setting):
        record = {"event": "result", "setting": setting, "population": size}
        materialized_bytes = size * member_bytes
        record["materialized_population_bytes"] = materialized_bytes
        # Only the materialised baseline holds the population; a recipe's memory does
        # not grow with it (full-rank OpenES included).
        guarded = setting == "ga_materialized"
        if failed or (guarded and 4 * materialized_bytes > args.memory_limit_gb * 2**30):
            record.update(ok=False, failure=failed or (
                f"memory guard: the materialised population alone is "
                f"{materialized_bytes / 2**30:.1f} GiB"))
            lrp.emit(record)
            continue
        try:
            chunk = min(args.chunk_size, size)
            strategy = make_strategy(setting, size)
            state = strategy.init(specs, args.seed)
            functions = pop.PopulationFunctions(model, specs, model.loss, chunk_size=chunk)
            tail = (functions.frozen_values(), functions.non_trainable_values(), xt, yt)
            if baseline is None:
                lrp.release_free_memory()
                baseline = lrp.rss_bytes()
            rng = np.random.default_rng(size)
            if setting.startswith("ga"):
                # Population 0 -> 1 without evaluating P initialisations: the survivors
                # are built from their seeds alone.
                state, _ = strategy.tell(state, rng.normal(size=size))

            generation = functools.partial(timed_generation, bk, strategy, functions,
                                           tail, setting, baseline)
            start = time.perf_counter()
            state, losses, _ = generation(state)
            record["first_generation_seconds"] = time.perf_counter() - start
            inference = None
            if setting == "rank1" and size == args.inference_population:
                variables = model.trainable_variables
                for spec, value in zip(evolvable, strategy.best(state)):
                    variables[spec.index].assign(value)
                inference = lrp.Inference(model, x, y, size, chunk)
                inference()
            runs, infs = [], []
            repeats = args.inference_repeats if inference is not None else args.repeats
            for _ in range(max(1, repeats)):
                state, losses, run = generation(state)
                runs.append(run)
                if inference is not None:
                    infs.append(inference()[0])
                if run["generation"] > lrp.LONG_GENERATION_SECONDS:
                    break
            gen = [r["generation"] for r in runs]
            evals = [r["eval"] for r in runs]
            record.update(
                ok=True, repeats=len(runs), generation_seconds=lrp.median(gen),
                ask_seconds=lrp.median([r["ask"] for r in runs]),
                eval_seconds=lrp.median(evals),
                member_tokens_per_second_generation=size * tokens_per_member
                / lrp.median(gen),
                peak_rss_bytes=max(r["rss"] for r in runs), baseline_rss_bytes=baseline,
                finite_losses=bool(np.all(np.isfinite(losses))))
            if inference is not None:
                record["inference_seconds"] = lrp.median(infs)
                record["vs_inference"] = lrp.median([i / e for i, e in zip(infs, evals)])
                record["vs_inference_generation"] = lrp.median(
                    [i / g for i, g in zip(infs, gen)])
        except Exception as error:  # recorded, not raised
            record.update(ok=False, failure=f"{type(error).__name__}: {str(error)[:300]}",
                          out_of_memory=lrp.is_out_of_memory(error))
            failed = f"after failure at P={size}"
        lrp.emit(record)
    return 0


def run_setting(args, setting):
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--setting", setting,
               "--chunk-size", str(args.chunk_size), "--sequences", str(args.sequences),
               "--sequence-length", str(args.sequence_length),
               "--repeats", str(args.repeats),
               "--inference-repeats", str(args.inference_repeats),
               "--inference-population", str(args.inference_population),
               "--memory-limit-gb", str(args.memory_limit_gb), "--seed", str(args.seed)]
    if args.populations:
        command += ["--populations", args.populations]
    rows, model = [], None
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=args.setting_timeout)
        output, code = done.stdout, done.returncode
    except subprocess.TimeoutExpired as error:
        output, code = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) \
            else (error.stdout or ""), "timeout"
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "model":
            model = record
        elif record.get("event") == "result":
            rows.append(record)
    done_sizes = {r["population"] for r in rows}
    for size in populations(args, setting):
        if size not in done_sizes:
            rows.append({"event": "result", "setting": setting, "population": size,
                         "ok": False, "failure": f"worker ended ({code}) before this size"})
    return model, rows


def summary(results):
    """The issue's table from every setting's rows."""
    def row(setting, size):
        return next((r for r in results.get(setting, {}).get("rows", [])
                     if r["population"] == size), None)

    out = {"peak_bytes_ratio": {}, "peak_bytes": {}, "first_generation_seconds": {}}
    for setting, entry in results.items():
        ok = [r for r in entry["rows"] if r.get("ok")]
        out["first_generation_seconds"][setting] = {
            r["population"]: round(r["first_generation_seconds"], 2) for r in ok}
        out["peak_bytes"][setting] = {r["population"]: r["peak_rss_bytes"] for r in ok}
        small = row(setting, 256)
        large = max(ok, key=lambda r: r["population"], default=None)
        if small and small.get("ok") and large and large["population"] > 256:
            # At P=65,536 where it ran, else at the largest population that did.
            out["peak_bytes_ratio"][setting] = {
                "population": large["population"],
                "ratio": round(large["peak_rss_bytes"] / max(small["peak_rss_bytes"], 1), 3)}
    inference = row("rank1", 4096)
    if inference and inference.get("ok"):
        out["vs_inference"] = round(inference["vs_inference"], 3)
        out["vs_inference_generation"] = round(inference["vs_inference_generation"], 3)
    big = row("rank1", 262144)
    out["population_262144_ok"] = bool(big and big.get("ok") and big["finite_losses"]
                                       and big["peak_rss_bytes"] < 8 * 2**30)
    ga = row("ga", 16384)
    out["ga_population_16384_ok"] = bool(ga and ga.get("ok") and ga["finite_losses"])
    baseline = row("ga_materialized", 16384)
    out["ga_16384_peak_bytes"] = {
        "recipe": ga.get("peak_rss_bytes") if ga else None,
        "materialized": baseline.get("peak_rss_bytes") if baseline else None}
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    results = {}
    for setting in args.settings:
        start = time.perf_counter()
        model, rows = run_setting(args, setting)
        results[setting] = {"model": model, "rows": rows,
                            "seconds": round(time.perf_counter() - start, 1)}
        for r in rows:
            text = (f"{r['generation_seconds']:.3f} s/generation, first "
                    f"{r['first_generation_seconds']:.1f} s, peak "
                    f"{r['peak_rss_bytes'] / 2**20:.0f} MiB" if r.get("ok")
                    else f"failed: {r.get('failure')}")
            print(f"{setting:16s} P={r['population']:>7d}: {text}", flush=True)
    import keras

    print(json.dumps({"backend": keras.config.backend(), "machine": f"cpu x{os.cpu_count()}",
                      **summary(results), "settings": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One prepared check of keras-lrne on an accelerator machine (JAX, no TensorFlow).

Prints one JSON object per line: first the machine (backend, devices, whether
TensorFlow was imported), then one line per measurement, each run in its own
subprocess under its own time limit (`timeout_s`), so one hang cannot use up the
machine's budget. A measurement that fails or times out still prints its line, with
`rc`, `timed_out` and the end of its output.

Measurements (the sizes of `--tiny` in brackets, for a dry run on a CPU):

1. `population_512`: `population_throughput.py` on the paper's factorized LM, P=512 x 16
   sequences x 128 tokens [P=8 x 2 x 16]: member-tokens/s, vs plain inference,
   overhead share.
2. `population_2048`: the same at P=2048 x 8 x 128 [P=16 x 2 x 16].
3. `paper_lm`: the paper's full configuration, P=512, 16 parents, 1,024 sequences x 128
   tokens of a 2,051-token vocabulary (random token ids: the text tasks need
   TensorFlow) [P=8, 2 parents, 8 x 16]: seconds per generation after the first
   (compiling) one, and the projected time of the paper's 300 generations.
4. `rollout_frostbite`: `rollout_throughput.py` on Frostbite, P=64 with 64 vector
   environments, 150-step cap, 2 generations [P=8, 8 environments, 30 steps]:
   factorized member-steps/s over the raw vector env, and where a generation's time
   goes (`factorized_time_split`, `full_time_split`: env resets, env steps, policy
   calls, and generation 0's compile estimate). At P=512 with 512 environments it did
   not finish 2 generations in 330 s on an H200 (the environments step on the host's
   CPUs: the accelerator does not speed them up).
5. `jax_control`: `jax_env_throughput.py --device-only`, gymnax CartPole-v1 through
   `JaxEnvironment`, `control_policy("small")` at P=4,096, 4 generations [its `--tiny`
   mode]: on-device member-steps/s, seconds per generation, compile time. Skipped (a
   line with `"skipped"`) when gymnax is not installed.

With `--low-rank`, the check measures low-rank populations instead (its own call;
`low_rank_population.py`: OpenES full-rank noise vs `perturbation_rank` 1 and 4 vs LoRA
rank 4, seconds per generation, member-tokens/s, peak evaluation memory from the
compiled program's memory analysis, `vs_inference`):

5. `low_rank_lm`: the paper's "full" LM, P=4,096, 65,536 and 262,144, chunk 1,024 (a
   chunk's logits are 1 GiB), one sequence of 128 tokens per member [P=8 and 32, chunk
   8, 8 tokens].
6. `low_rank_mlp`: the 4-layer MLP of width 1,024, P=4,096, 65,536 and 262,144, chunk
   4,096, one row per member [P=8 and 32, chunk 8, width 64].
7. `hyperscale_rank1`: `hyperscale.py`, whole generations (ask, evaluation, tell) of
   `OpenES(P, perturbation_rank=1)` on the "full" LM, P=4,096 and 262,144, chunk 1,024,
   one sequence of 128 tokens per member: seconds per generation, peak resident memory,
   `vs_inference_generation` at P=4,096 (the EGGROLL anchor: 0.91 on one H100) [P=8 and
   32, chunk 8, 8 tokens].
8. `hyperscale_ga`: `hyperscale.py`, whole steady-state generations of `GA(P, 16)` on the
   same LM, P=4,096 and 65,536 [P=8 and 32].

On the accelerator machine (Python 3.12; no network), after building the wheel folder
on a machine that has one (see benchmarks/README.md, "Device check"):

    pip install --no-index --no-deps wheels/*.whl
    KERAS_BACKEND=jax python benchmarks/device_check.py > device_check.jsonl

Dry run on any machine: `KERAS_BACKEND=jax python benchmarks/device_check.py --tiny`
(`--low-rank --tiny` for the low-rank section).
"""

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

PAPER_LM = r"""
import json, sys, time
import numpy as np
import keras
import keras_lrne
from keras_lrne import presets, strategies

population, parents, sequences, length, generations = map(int, sys.argv[1:6])
rng = np.random.default_rng(0)
tokens = rng.integers(0, 2051, (sequences, length + 1)).astype("int32")
# (not keras.utils.set_random_seed: it imports TensorFlow when it is installed)
model = presets.language_model("factorized", vocab_size=2051, sequence_length=length)
model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
times = []
class Clock(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.start)
history = model.evolve(tokens[:, :-1], tokens[:, 1:], generations=generations,
                       strategy=strategies.GA(population, parents), verbose=0,
                       callbacks=[Clock()])
steady = float(np.median(times[1:])) if len(times) > 1 else float(times[0])
print(json.dumps({
    "population": population, "parents": parents, "sequences": sequences,
    "sequence_length": length, "generations": generations,
    "first_generation_seconds": times[0], "seconds_per_generation": steady,
    "projected_300_generations_minutes": (times[0] + 299 * steady) / 60,
    "member_tokens_per_second": float(np.median(
        history.history["member_tokens_per_second"][1:] or
        history.history["member_tokens_per_second"])),
    "final_loss": history.history["loss"][-1],
    "chunk_size": model.evolution_run.chunk_size,
    "batch_size": model.evolution_run.batch_size,
    "tensorflow_imported": "tensorflow" in sys.modules,
}))
"""


#: Per measurement: (GPU sizes, --tiny sizes, time limit in seconds; 540 s in all, so
#: the whole check fits one 600 s device call). Population
#: throughput: (P, sequences, tokens, generations); the paper's LM: (P, parents,
#: sequences, tokens, generations); the rollout: (P, parents, envs, step cap); the
#: on-device control: (P, generations; `--tiny`: the script's own tiny mode).
SIZES = {
    "population_512": ((512, 16, 128, 6), (8, 2, 16, 3), 120),
    "population_2048": ((2048, 8, 128, 5), (16, 2, 16, 3), 110),
    "paper_lm": ((512, 16, 1024, 128, 4), (8, 2, 8, 16, 3), 180),
    "rollout_frostbite": ((64, 8, 64, 150), (8, 2, 8, 30), 90),
    "jax_control": ((4096, 4), None, 40),
}

#: Measurements skipped (with a line saying so) when a package they need is missing.
MISSING = {"jax_control": "gymnax"}


#: The `--low-rank` section: `low_rank_population.py` (and `hyperscale.py`) arguments at
#: GPU sizes and at `--tiny` ones, and the time limit (they add up to 570 s: one 600 s
#: device call).
#: The memory guard (estimated OpenES noise) is given explicitly: the script's default
#: reads the host's memory, not the accelerator's.
LOW_RANK = {
    "low_rank_lm": (
        ["--models", "lm", "--populations", "4096,65536,262144", "--chunk-size", "1024",
         "--sequences", "1", "--sequence-length", "128", "--inference-population", "65536",
         "--repeats", "2", "--max-seconds", "20", "--setting-timeout", "45",
         "--memory-limit-gb", "56"],
        ["--models", "lm", "--populations", "8,32", "--chunk-size", "8",
         "--sequence-length", "8", "--inference-population", "32", "--repeats", "1"],
        200),
    "low_rank_mlp": (
        ["--models", "mlp", "--populations", "4096,65536,262144", "--chunk-size", "4096",
         "--mlp-samples", "1", "--inference-population", "65536", "--repeats", "3",
         "--max-seconds", "20", "--setting-timeout", "25", "--memory-limit-gb", "56"],
        ["--models", "mlp", "--populations", "8,32", "--chunk-size", "8", "--mlp-width",
         "64", "--inference-population", "32", "--repeats", "1"],
        110),
    "hyperscale_rank1": (
        ["--settings", "rank1", "--populations", "4096,262144", "--chunk-size", "1024",
         "--sequence-length", "128", "--inference-population", "4096", "--repeats", "2",
         "--inference-repeats", "3", "--setting-timeout", "125", "--memory-limit-gb", "56"],
        ["--settings", "rank1", "--populations", "8,32", "--chunk-size", "8",
         "--sequence-length", "8", "--inference-population", "32", "--repeats", "1",
         "--inference-repeats", "1"],
        130),
    "hyperscale_ga": (
        ["--settings", "ga", "--populations", "4096,65536", "--chunk-size", "1024",
         "--sequence-length", "128", "--repeats", "2", "--setting-timeout", "125",
         "--memory-limit-gb", "56"],
        ["--settings", "ga", "--populations", "8,32", "--chunk-size", "8",
         "--sequence-length", "8", "--repeats", "1"],
        130),
}


def low_rank_measurements(tiny):
    """`[(name, argv, timeout_s)]` of the `--low-rank` section."""
    plan = []
    for name, (gpu, small, limit) in LOW_RANK.items():
        script = "hyperscale.py" if name.startswith("hyperscale") else "low_rank_population.py"
        plan.append((name, [sys.executable, os.path.join(HERE, script),
                            *(small if tiny else gpu)], 240 if tiny else limit))
    return plan


def measurements(tiny):
    """`[(name, argv, timeout_s)]` of the check, at the GPU sizes or the `--tiny` ones."""
    py = sys.executable
    population = os.path.join(HERE, "population_throughput.py")
    rollout = os.path.join(HERE, "rollout_throughput.py")
    plan = []
    for name, (gpu, small, limit) in SIZES.items():
        sizes = [str(v) for v in ((small if tiny else gpu) or ())]
        if name.startswith("population_"):
            members, sequences, length, generations = sizes
            argv = [py, population, "--population", members, "--sequences", sequences,
                    "--sequence-length", length, "--generations", generations,
                    "--variants", "factorized", "--naive-members", "1" if tiny else "2"]
        elif name == "paper_lm":
            argv = [py, "-c", PAPER_LM, *sizes]
        elif name == "jax_control":
            members, generations = [str(v) for v in gpu]
            argv = [py, os.path.join(HERE, "jax_env_throughput.py"), "--device-only",
                    *(["--tiny"] if tiny else ["--settings", f"small:{members}",
                                               "--generations", generations])]
        else:
            members, parents, envs, cap = sizes
            argv = [py, rollout, "--population", members, "--parents", parents,
                    "--num-envs", envs, "--generations", "2",
                    "--max-episode-steps", cap, "--raw-steps", "20" if tiny else "100",
                    "--skip-carracing"]
        plan.append((name, argv, 240 if tiny else limit))
    return plan


def installed(package):
    """Whether `package` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(package) is not None
    except ImportError:
        return False


def last_json(text):
    """The last line of `text` that parses as a JSON object, or None."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def device_line():
    """The machine, as a dict (imports JAX or TF only through Keras' backend)."""
    import keras

    backend = keras.config.backend()
    info = {"check": "device", "backend": backend, "keras": keras.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count()}
    if backend == "jax":
        import jax

        info["jax"] = jax.__version__
        info["devices"] = [str(d) for d in jax.devices()]
        stats = getattr(jax.devices()[0], "memory_stats", lambda: None)() or {}
        info["memory_bytes_limit"] = stats.get("bytes_limit")
    info["tensorflow_imported"] = "tensorflow" in sys.modules
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="CPU-sized dry run of every measurement")
    parser.add_argument("--low-rank", action="store_true",
                        help="run the low-rank population section (low_rank_population.py) "
                        "instead of the default measurements")
    parser.add_argument("--only", default=None,
                        help="comma-separated measurement names to run (default: all)")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(device_line()), flush=True)
    wanted = None if args.only is None else set(args.only.split(","))
    plan = low_rank_measurements(args.tiny) if args.low_rank else measurements(args.tiny)
    for name, command, limit in plan:
        if wanted is not None and name not in wanted:
            continue
        missing = MISSING.get(name)
        if missing is not None and not installed(missing):
            print(json.dumps({"check": name, "skipped": f"{missing} is not installed"}),
                  flush=True)
            continue
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=limit,
                                  cwd=os.path.dirname(HERE))
            rc, out, err, timed_out = done.returncode, done.stdout, done.stderr, False
        except subprocess.TimeoutExpired as error:
            rc, timed_out = 124, True
            out = error.stdout.decode() if isinstance(error.stdout, bytes) else error.stdout
            err = error.stderr.decode() if isinstance(error.stderr, bytes) else error.stderr
        line = {"check": name, "rc": rc, "timed_out": timed_out, "timeout_s": limit,
                "seconds": round(time.perf_counter() - start, 1),
                "result": last_json(out or "")}
        if rc != 0 or line["result"] is None:
            line["output_tail"] = ((out or "") + (err or ""))[-1500:]
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""On-device vs host environments: gymnax CartPole-v1 through `JaxEnvironment` against
gymnasium CartPole-v1 through the host `Environment` task, the same policy and population.

For each setting (`control_policy("small")` at P=1,024 and `"full"` (2 x 256) at P=256 by
default) one whole `model.evolve()` run per task, measured in this one process (JAX
backend): generation 0 (which compiles) is reported apart; over the later generations,
useful member-steps/s (the steps every member-episode played until it ended, summed,
over the generations' wall time: the `env_steps` log, the same count on both tasks) and
seconds per generation (median). The ratio is on-device / host member-steps/s.
`--device-only` times `JaxEnvironment` alone (the device check's control measurement).
`--tensorflow-host` also times the host loop on TensorFlow (in a child process: the
backend is fixed at import).

Both tasks use a 500-step cap, observation normalisation (as `keras-lrne control`),
one episode per member, GA with P/8 parents, seed 0. The episodes differ (gymnax's
CartPole is a reimplementation, seeded otherwise), so the populations evolve apart and
the episode lengths differ: compare member-steps/s, not seconds per generation.
Brax / MuJoCo MJX are not measured (not installed here).

The last line is one JSON object: per setting the host and on-device rates, seconds per
generation, compile seconds and the ratio.

    KERAS_BACKEND=jax python benchmarks/jax_env_throughput.py
    KERAS_BACKEND=jax python benchmarks/jax_env_throughput.py --tiny      # seconds
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
from rollout_throughput import GenerationTimer  # this folder: the scripts run from it

import keras_lrne

CAP = 500


def make_task(kind, cap):
    if kind == "device":
        return keras_lrne.tasks.JaxEnvironment("CartPole-v1", max_episode_steps=cap,
                                               normalize_observations=True)
    return keras_lrne.tasks.Environment("CartPole-v1", max_episode_steps=cap,
                                        normalize_observations=True)


def run(kind, variant, population, generations, cap):
    """One `evolve()` run; its compile generation and the rates of the later ones."""
    task = make_task(kind, cap)
    keras.utils.set_random_seed(0)
    model = keras_lrne.presets.control_policy(variant, input_dim=task.input_shape[0],
                                              num_actions=task.num_outputs)
    timer = GenerationTimer()
    start = time.perf_counter()
    model.evolve(task, strategy=keras_lrne.strategies.GA(population, max(1, population // 8)),
                 generations=generations, seed=0, verbose=0, callbacks=[timer])
    total = time.perf_counter() - start
    steps = sum(int(logs["env_steps"]) for logs in timer.logs[1:])
    seconds = sum(timer.seconds[1:])
    return {
        "member_steps_per_second": steps / seconds,
        "seconds_per_generation": statistics.median(timer.seconds[1:]),
        "first_generation_seconds": timer.seconds[0],
        "first_generation_env_steps": int(timer.logs[0]["env_steps"]),
        "env_steps": steps,
        "mean_steps_per_episode": steps / (population * (generations - 1)),
        "last_mean_return": float(timer.logs[-1]["mean_return"]),
        "evolve_seconds": total,
    }


def settings(args):
    out = []
    for item in args.settings.split(","):
        variant, population = item.split(":")
        out.append((variant, int(population)))
    return out


def tensorflow_host(args):
    """The host loop on TensorFlow, timed in a child process."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    command = [sys.executable, os.path.abspath(__file__), "--host-only",
               "--settings", args.settings, "--generations", str(args.generations),
               "--cap", str(args.cap)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="small:1024,full:256",
                        help="comma-separated VARIANT:POPULATION pairs")
    parser.add_argument("--generations", type=int, default=6,
                        help="generations per run (the first, compiling, reported apart)")
    parser.add_argument("--cap", type=int, default=CAP, help="steps per episode at most")
    parser.add_argument("--tensorflow-host", action="store_true",
                        help="also time the host loop on TensorFlow (child process)")
    parser.add_argument("--device-only", action="store_true",
                        help="time JaxEnvironment alone (the device check's control "
                             "measurement: no host loop)")
    parser.add_argument("--host-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true",
                        help="a seconds-long check: small:16, 2 generations, 50-step cap")
    args = parser.parse_args(argv)
    if args.tiny:
        args.settings, args.generations, args.cap = "small:16", 2, 50
    if args.generations < 2:
        parser.error(f"--generations must be at least 2 (the first compiles). Received: "
                     f"--generations={args.generations}")
    backend = keras.config.backend()
    if args.host_only:
        print(json.dumps({f"{v}:{p}": run("host", v, p, args.generations, args.cap)
                          for v, p in settings(args)}))
        return
    if backend != "jax":
        parser.error(f"JaxEnvironment needs KERAS_BACKEND=jax. Received: "
                     f"KERAS_BACKEND={backend}")
    print(f"backend={backend} settings={args.settings} generations={args.generations} "
          f"cap={args.cap} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}",
          file=sys.stderr)
    result = {"backend": backend, "device": str(__import__("jax").devices()[0]),
              "generations": args.generations, "cap": args.cap, "settings": {}}
    tf_host = tensorflow_host(args) if args.tensorflow_host else {}
    for variant, population in settings(args):
        device = run("device", variant, population, args.generations, args.cap)
        if args.device_only:
            print(f"{variant} policy, P={population:,}, on-device (gymnax, JaxEnvironment): "
                  f"{device['member_steps_per_second']:,.0f} member-steps/s, "
                  f"{device['seconds_per_generation']:.3f} s/generation; generation 0 "
                  f"{device['first_generation_seconds']:.1f} s")
            result["settings"][f"{variant}:{population}"] = {"device": device}
            continue
        host = run("host", variant, population, args.generations, args.cap)
        ratio = device["member_steps_per_second"] / host["member_steps_per_second"]
        entry = {"host": host, "device": device, "device_over_host": ratio}
        print(f"{variant} policy, P={population:,}:")
        for name, r in (("host (gymnasium, Environment)", host),
                        ("on-device (gymnax, JaxEnvironment)", device)):
            print(f"  {name}: {r['member_steps_per_second']:,.0f} member-steps/s, "
                  f"{r['seconds_per_generation']:.3f} s/generation "
                  f"({r['mean_steps_per_episode']:.0f} steps/episode); generation 0 "
                  f"{r['first_generation_seconds']:.1f} s")
        key = f"{variant}:{population}"
        if key in tf_host:
            tf = tf_host[key]
            entry["host_tensorflow"] = tf
            entry["device_over_host_tensorflow"] = (device["member_steps_per_second"]
                                                    / tf["member_steps_per_second"])
            print(f"  host on TensorFlow: {tf['member_steps_per_second']:,.0f} "
                  f"member-steps/s, {tf['seconds_per_generation']:.3f} s/generation")
        print(f"  on-device / host: {ratio:.1f}x")
        result["settings"][key] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()

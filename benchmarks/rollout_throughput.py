"""Rollout throughput: the population closed loop vs the raw vector environment.

Measured in one run on one machine (ratios are what to compare; machines are noisy):

1. raw: the Atari task's vector environment (Frostbite, RGB, 4-frame stack) stepped with
   random actions: the ceiling of any closed loop on this machine, measured right before
   and after every generation (the env speed drifts by tens of percent within minutes);
   each generation's closed-loop speed is divided by the raw speed of the same moments;
   ale-py's native vector environment (stepped in C++ threads, but a ROM load per
   seeded reset) is measured at the same moments (`native_raw_env_steps_per_second`,
   `factorized_over_native_raw`);
2. keras-lrne's closed loop (`model.evolve(keras_lrne.tasks.Atari(...))`) with a
   population of the paper's Atari network, factorized (rank 4) and full: member-steps/s
   (environment steps of all members per second, policy included), with the default
   rollout lanes (2 for ale-py: one half of the environments steps while the policy runs
   on the other) and, for the factorized net, with the other setting;
3. the multiply-adds of a factorized conv computed as conv(x, U) then a 1x1 projection by
   V vs the materialised kernel, for the paper's Atari net;
4. the wall time of a CarRacing generation with early termination, factorized vs full
   (the paper measured 0.62), and the wall time per env step (which leaves out how long
   each population's episodes happen to last); skipped with --skip-carracing.

Where a generation's time goes is printed for the factorized and full runs (and kept as
`factorized_time_split` / `full_time_split`): medians over generations 1.. of the seconds
in env resets and env steps (summed over the rollout lanes, so with two lanes they
overlap the policy), in policy calls, in the rollout and in the whole generation (the raw
probes excluded) and outside the rollout (selection, mutation, and their compilation when
it falls in generation 1), and generation 0's seconds with a compile estimate (generation
0's rollout minus the median later one: the policy compiles there).

The last line is one JSON object with at least `raw_env_steps_per_second`,
`factorized_over_raw` and `full_over_raw`.

    python benchmarks/rollout_throughput.py
    KERAS_BACKEND=jax python benchmarks/rollout_throughput.py --population 64 --num-envs 64
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import keras_lrne


class RawEnv:
    """Exactly the vector env the Atari task steps, stepped with random actions: the
    ceiling of any closed loop on this machine."""

    def __init__(self, game, num_envs, seed=0):
        from ale_py.vector_env import AtariVectorEnv

        task = keras_lrne.tasks.Atari(game, num_envs=num_envs)
        self.env = task.make_vector_env(num_envs)
        self.native = AtariVectorEnv(task.game, num_envs, **task.vector_env_kwargs())
        self.native.reset(seed=np.arange(num_envs))
        self.rng = np.random.default_rng(seed)
        self.num_envs = num_envs
        self.active = list(range(num_envs))
        self.env.reset(np.arange(num_envs), num_envs)
        self.speed(1)

    def speed(self, steps):
        """Random-action env-steps/s over `steps` steps of all envs."""
        n = self.env.single_action_space.n
        start = time.perf_counter()
        for _ in range(steps):
            self.env.step(self.rng.integers(0, n, self.num_envs), self.active)
        return self.num_envs * steps / (time.perf_counter() - start)

    def native_speed(self, steps):
        """The same for ale-py's native vector environment."""
        n = self.env.single_action_space.n
        start = time.perf_counter()
        for _ in range(steps):
            self.native.step(self.rng.integers(0, n, self.num_envs))
        return self.num_envs * steps / (time.perf_counter() - start)

    def close(self):
        self.env.close()
        self.native.close()


class TimedVectorEnv:
    """The task's vector env, with the seconds spent in its resets and steps summed (over
    both rollout lanes: with two lanes, one lane's steps overlap the other's policy)."""

    def __init__(self, env, clock):
        self._env, self._clock = env, clock

    def __getattr__(self, name):
        value = getattr(self._env, name)
        kind = ("reset" if name in ("reset", "reset_at", "try_reset_at") else
                "step" if name == "step" else None)
        if kind is None or not callable(value):
            return value

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self._clock[kind] += time.perf_counter() - start
        return timed


def timed_task(task, clock):
    """Makes `task` build `TimedVectorEnv`s that add their reset and step time to `clock`."""
    make = task.make_vector_env
    task.make_vector_env = lambda num_envs: TimedVectorEnv(make(num_envs), clock)
    return task


class RawProbe(keras.callbacks.Callback):
    """Measures the raw env speed right before and right after every generation, so each
    generation's closed-loop speed is compared with the env speed of the same moments
    (the env speed of these machines drifts by tens of percent within minutes)."""

    def __init__(self, raw, steps):
        super().__init__()
        self.raw, self.steps = raw, steps
        self.ratios, self.raw_speeds, self.logs = [], [], []
        self.native_ratios, self.native_speeds = [], []
        #: Per generation: seconds of the whole generation, and of the env's resets and
        #: steps (`clock`, filled by `TimedVectorEnv`) within it.
        self.clock = {"reset": 0.0, "step": 0.0}
        self.splits = []

    def on_epoch_begin(self, epoch, logs=None):
        self._before = self.raw.speed(self.steps)
        self._native_before = self.raw.native_speed(self.steps)
        self.clock.update(reset=0.0, step=0.0)
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        logs = dict(logs or {})
        native_after = self.raw.native_speed(self.steps)
        after = self.raw.speed(self.steps)
        rollout = logs["env_steps"] / max(logs["frames_per_second"], 1e-9)
        self.splits.append({"generation_seconds": seconds, "rollout_seconds": rollout,
                            "reset_seconds": self.clock["reset"],
                            "env_step_seconds": self.clock["step"],
                            "policy_seconds": logs["policy_share"] * rollout})
        logs = dict(logs or {})
        raw = statistics.mean([self._before, after])
        native = statistics.mean([self._native_before, native_after])
        self.raw_speeds += [self._before, after]
        self.native_speeds += [self._native_before, native_after]
        self.ratios.append(logs["frames_per_second"] / raw)
        self.native_ratios.append(logs["frames_per_second"] / native)
        self.logs.append(logs)


def closed_loop_speed(variant, args, raw_env, lanes="auto"):
    """Median over generations 1.. (generation 0 compiles the policy) of member-steps/s,
    of member-steps/s over the raw speed of the same moments, and of the policy share."""
    task = keras_lrne.tasks.Atari(args.game, max_episode_steps=args.max_episode_steps,
                                  num_envs=args.num_envs)
    # 1 lane: stepping and the policy strictly alternate; 2: they overlap (two halves).
    task.rollout_lanes = lanes
    keras.utils.set_random_seed(0)
    model = keras_lrne.presets.atari_policy(variant, num_actions=task.num_outputs, rank=4)
    probe = RawProbe(raw_env, args.raw_steps)
    timed_task(task, probe.clock)
    model.evolve(task, strategy=keras_lrne.strategies.GA(args.population, args.parents),
                 generations=args.generations, seed=0, verbose=0, callbacks=[probe])
    fps = statistics.median(logs["frames_per_second"] for logs in probe.logs[1:])
    share = statistics.median(logs["policy_share"] for logs in probe.logs[1:])
    return {"fps": fps, "ratio": statistics.median(probe.ratios[1:]), "share": share,
            "raw": probe.raw_speeds[2:], "model": model,
            "native_ratio": statistics.median(probe.native_ratios[1:]),
            "native": probe.native_speeds[2:], "split": time_split(probe.splits)}


def time_split(splits):
    """Where a generation's time went: the medians over the later generations of the
    seconds in env resets, env steps (summed over lanes) and policy calls, in the
    rollout, in the whole generation and outside the rollout; generation 0's seconds,
    and a compile estimate: generation 0's rollout minus the median later one (the
    policy compiles in generation 0's rollout)."""
    later = splits[1:] or splits
    split = {key: statistics.median(s[key] for s in later) for key in later[0]}
    # Selection, mutation, bookkeeping, and their compilation when it falls in
    # generation 1 (so with few generations this is not the steady cost).
    split["outside_rollout_seconds"] = statistics.median(
        s["generation_seconds"] - s["rollout_seconds"] for s in later)
    split["first_generation_seconds"] = splits[0]["generation_seconds"]
    split["compile_seconds"] = max(
        0.0, splits[0]["rollout_seconds"] - split["rollout_seconds"])
    return split


class GenerationTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds, self.logs = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.logs.append(dict(logs or {}))


def conv_costs(model):
    """Multiply-adds per frame of the factorized convs: two-step vs materialised kernel."""
    two_step = materialised = 0
    for layer in model.layers:
        if isinstance(layer, keras_lrne.layers.FactorizedConv2D):
            cin = layer.input.shape[-1]
            out = layer.output.shape
            positions = out[1] * out[2]
            kh, kw = layer.kernel_size
            two_step += positions * (kh * kw * cin * layer.rank + layer.rank * layer.filters)
            materialised += positions * kh * kw * cin * layer.filters
    return two_step, materialised


def carracing_ratio(args):
    seconds = {}
    for variant in ("factorized", "full"):
        task = keras_lrne.tasks.CarRacing(episodes=1, max_episode_steps=args.carracing_steps,
                                          num_envs=args.carracing_population)
        keras.utils.set_random_seed(0)
        model = keras_lrne.presets.carracing_policy(variant, rank=1)
        timer = GenerationTimer()
        parents = max(1, args.carracing_population // 4)
        model.evolve(task, strategy=keras_lrne.strategies.GA(args.carracing_population,
                                                             parents),
                     generations=args.carracing_generations, seed=0, verbose=0,
                     callbacks=[timer])
        # Generation 0 compiles the policy: excluded.
        saved = statistics.mean(logs["early_termination_saved"] for logs in timer.logs[1:])
        steps = int(sum(logs["env_steps"] for logs in timer.logs[1:]))
        seconds[variant] = (sum(timer.seconds[1:]), {"early_termination_saved": saved,
                                                     "env_steps": steps})
    ratio = seconds["factorized"][0] / seconds["full"][0]
    return ratio, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Frostbite")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--parents", type=int, default=4)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--generations", type=int, default=4,
                        help="generations per closed-loop run (the first, compiling, is "
                             "not timed)")
    parser.add_argument("--max-episode-steps", type=int, default=150)
    parser.add_argument("--raw-steps", type=int, default=100,
                        help="random-action steps of all envs per raw measurement")
    parser.add_argument("--skip-carracing", action="store_true")
    parser.add_argument("--carracing-population", type=int, default=4)
    parser.add_argument("--carracing-steps", type=int, default=200)
    parser.add_argument("--carracing-generations", type=int, default=2,
                        help="generations per variant (the first, compiling, is not timed)")
    parser.add_argument("--skip-atari", action="store_true")
    args = parser.parse_args(argv)

    backend = keras.config.backend()
    print(f"backend={backend} population={args.population} num_envs={args.num_envs} "
          f"game={args.game} cap={args.max_episode_steps}", file=sys.stderr)
    result = {"backend": backend}
    if not args.skip_atari:
        raw_env = RawEnv(args.game, args.num_envs)
        fact = closed_loop_speed("factorized", args, raw_env)
        full = closed_loop_speed("full", args, raw_env)
        default_lanes = fact["model"].evolution_run.evaluator.rollout.num_lanes
        other_lanes = 1 if default_lanes == 2 else 2
        other = closed_loop_speed("factorized", args, raw_env, lanes=other_lanes)
        raw_env.close()
        raw_speeds = fact["raw"] + full["raw"] + other["raw"]
        raw = statistics.median(raw_speeds)
        native = statistics.median(fact["native"] + full["native"] + other["native"])
        two_step, materialised = conv_costs(fact["model"])

        print(f"raw vector env ({args.num_envs} envs, random actions), measured before and "
              f"after every generation: median {raw:,.0f} env-steps/s (min "
              f"{min(raw_speeds):,.0f}, max {max(raw_speeds):,.0f})")
        print(f"ale-py's native vector env at the same moments: median {native:,.0f} "
              "env-steps/s")
        print("closed loop (median over generations; each generation's speed over the raw "
              "speed measured right before and after it):")
        print(f"  factorized rank 4: {fact['fps']:,.0f} member-steps/s = "
              f"{fact['ratio']:.2f}x raw, {fact['native_ratio']:.2f}x native raw (policy "
              f"{fact['share']:.0%} of the time)")
        print(f"  full:              {full['fps']:,.0f} member-steps/s = "
              f"{full['ratio']:.2f}x raw, {full['native_ratio']:.2f}x native raw (policy "
              f"{full['share']:.0%} of the time)")
        for name, run in (("factorized", fact), ("full", full)):
            sp = run["split"]
            print(f"  {name} time split (median generation after the first): "
                  f"{sp['generation_seconds']:.2f} s, rollout {sp['rollout_seconds']:.2f} s: "
                  f"resets {sp['reset_seconds']:.2f} s, env steps "
                  f"{sp['env_step_seconds']:.2f} s (summed over lanes), policy "
                  f"{sp['policy_seconds']:.2f} s; outside the rollout "
                  f"{sp['outside_rollout_seconds']:.2f} s; generation 0 "
                  f"{sp['first_generation_seconds']:.1f} s (compile ~"
                  f"{sp['compile_seconds']:.1f} s)")
        print(f"  factorized with {other_lanes} lane(s) instead of the default "
              f"{default_lanes}: {other['fps']:,.0f} member-steps/s = {other['ratio']:.2f}x raw")
        print(f"factorized convs, multiply-adds per frame: two-step {two_step:,} vs "
              f"materialised kernel {materialised:,} ({materialised / max(two_step, 1):.1f}x)")
        result = {
            "backend": backend,
            "population": args.population,
            "num_envs": args.num_envs,
            "raw_env_steps_per_second": raw,
            "factorized_member_steps_per_second": fact["fps"],
            "full_member_steps_per_second": full["fps"],
            "factorized_over_raw": fact["ratio"],
            "full_over_raw": full["ratio"],
            "native_raw_env_steps_per_second": native,
            "factorized_over_native_raw": fact["native_ratio"],
            "full_over_native_raw": full["native_ratio"],
            "default_lanes": default_lanes,
            f"factorized_{other_lanes}_lanes_over_raw": other["ratio"],
            "conv_macs_two_step_over_materialised": two_step / max(materialised, 1),
            "factorized_time_split": fact["split"],
            "full_time_split": full["split"],
        }
    if not args.skip_carracing:
        ratio, seconds = carracing_ratio(args)
        print(f"CarRacing generation wall time, factorized / full: {ratio:.2f} "
              f"({seconds['factorized'][0]:.1f} s vs {seconds['full'][0]:.1f} s; "
              f"early termination saved {seconds['factorized'][1]['early_termination_saved']:.0%}"
              f" / {seconds['full'][1]['early_termination_saved']:.0%} of env steps)")
        per_step = {v: 1e3 * seconds[v][0] / max(seconds[v][1]["env_steps"], 1)
                    for v in seconds}
        print(f"CarRacing wall time per env step (the generation's time over the env steps "
              f"its members took): factorized {per_step['factorized']:.1f} ms, full "
              f"{per_step['full']:.1f} ms ({per_step['factorized'] / per_step['full']:.2f}); "
              f"env steps {seconds['factorized'][1]['env_steps']:,} vs "
              f"{seconds['full'][1]['env_steps']:,}")
        result["carracing_factorized_over_full_time"] = ratio
        result["carracing_factorized_over_full_time_per_env_step"] = (
            per_step["factorized"] / per_step["full"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()

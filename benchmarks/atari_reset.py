"""The cost of making every Atari episode a function of its seed: keras-lrne's seeded
reset (restoring the state of a seeded ROM load) vs ale-py's seeded and unseeded resets,
measured in one run.

Unseeded resets carry emulator state from one episode to the next in a sub-environment,
so a population's returns depended on how many sub-environments the rollout used;
keras-lrne therefore seeds every reset. ale-py's native vector environment implements a
seeded reset by reloading the ROM; keras-lrne's `AleVectorEnv` restores the emulator
state cloned once after such a load (with the seed's generator). This measures, for one
game, the wall time of a partial reset of one sub-environment (what the rollout does
when an episode ends and the slot is refilled) in the three ways, interleaved, and the
time of the environment steps of one typical episode for scale. The last line is JSON:
`seeded_reset_ms` (keras-lrne's), `ale_seeded_reset_ms`, `unseeded_reset_ms` (both
ale-py's native vector env), `seeded_over_unseeded`, `ale_seeded_over_unseeded`,
`episode_steps_ms` and `ale_episode_steps_ms` (`--episode-steps` random steps of all
sub-environments of each) and `seeded_reset_share_of_episode` (keras-lrne's seeded
reset's time over its episode time).

    python benchmarks/atari_reset.py --game frostbite --resets 200
"""

import argparse
import json
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="frostbite")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--resets", type=int, default=200)
    parser.add_argument("--episode-steps", type=int, default=500,
                        help="steps of the episode the reset cost is compared with")
    args = parser.parse_args()
    from ale_py.vector_env import AtariVectorEnv

    import keras_lrne

    task = keras_lrne.tasks.Atari(args.game, num_envs=args.num_envs, noop_max=0)
    ours = task.make_vector_env(args.num_envs)
    native = AtariVectorEnv(task.game, args.num_envs, **task.vector_env_kwargs())
    ours.reset(np.arange(args.num_envs), args.num_envs)
    native.reset(seed=np.arange(args.num_envs))
    rng = np.random.default_rng(0)
    everyone = list(range(args.num_envs))
    mask = np.zeros(args.num_envs, bool)
    mask[0] = True
    times = {"seeded": [], "ale_seeded": [], "unseeded": []}
    for i in range(args.resets):
        for kind, samples in times.items():
            actions = rng.integers(0, 4, args.num_envs)
            if kind == "seeded":
                ours.step(actions, everyone)
                start = time.perf_counter()
                ours.reset_at([0], [i])
            else:
                native.step(actions)
                start = time.perf_counter()
                if kind == "ale_seeded":
                    native.reset(seed=np.asarray([i], np.int64), options={"reset_mask": mask})
                else:
                    native.reset(options={"reset_mask": mask})
            samples.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(args.episode_steps):
        ours.step(rng.integers(0, 4, args.num_envs), everyone)
    steps_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    for _ in range(args.episode_steps):
        native.step(rng.integers(0, 4, args.num_envs))
    ale_steps_ms = (time.perf_counter() - start) * 1000
    ours.close()
    native.close()
    ms = {kind: float(np.median(samples) * 1000) for kind, samples in times.items()}
    print(f"{args.game}: keras-lrne seeded reset {ms['seeded']:.2f} ms, ale-py seeded "
          f"{ms['ale_seeded']:.2f} ms, ale-py unseeded {ms['unseeded']:.2f} ms (median of "
          f"{args.resets} partial resets of 1 of {args.num_envs} sub-environments); "
          f"{args.episode_steps} steps of all sub-environments: {steps_ms:.0f} ms "
          f"(ale-py's native vector env: {ale_steps_ms:.0f} ms)")
    print(json.dumps({
        "game": args.game, "num_envs": args.num_envs,
        "seeded_reset_ms": round(ms["seeded"], 3),
        "ale_seeded_reset_ms": round(ms["ale_seeded"], 3),
        "unseeded_reset_ms": round(ms["unseeded"], 3),
        "seeded_over_unseeded": round(ms["seeded"] / ms["unseeded"], 2),
        "ale_seeded_over_unseeded": round(ms["ale_seeded"] / ms["unseeded"], 2),
        "episode_steps_ms": round(steps_ms, 1),
        "ale_episode_steps_ms": round(ale_steps_ms, 1),
        "seeded_reset_share_of_episode": round(ms["seeded"] / steps_ms, 4),
    }))


if __name__ == "__main__":
    main()

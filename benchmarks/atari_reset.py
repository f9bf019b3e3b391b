"""The cost of making every Atari episode a function of its seed: seeded vs unseeded
resets of ale-py's native vector environment, measured in one run.

Unseeded resets carry emulator state from one episode to the next in a sub-environment,
so a population's returns depended on how many sub-environments the rollout used;
keras-lrne therefore seeds every reset (ale-py reloads the ROM). This measures, for one
game, the wall time of a partial reset of one sub-environment (what the rollout does
when an episode ends and the slot is refilled) both ways, alternating, and the time of
the environment steps of one typical episode for scale. The last line is JSON:
`seeded_reset_ms`, `unseeded_reset_ms`, `seeded_over_unseeded`, `episode_steps_ms`
(`--episode-steps` random steps of the same environment) and
`seeded_reset_share_of_episode` (the seeded reset's extra time over that episode time).

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

    env = AtariVectorEnv(args.game, args.num_envs, frameskip=4,
                         repeat_action_probability=0.0, noop_max=0, stack_num=4,
                         img_height=84, img_width=84, grayscale=False)
    env.reset(seed=np.arange(args.num_envs))
    rng = np.random.default_rng(0)
    mask = np.zeros(args.num_envs, bool)
    mask[0] = True
    seeded, unseeded = [], []
    for i in range(args.resets):
        for kind, times in (("seeded", seeded), ("unseeded", unseeded)):
            env.step(rng.integers(0, 4, args.num_envs))
            start = time.perf_counter()
            if kind == "seeded":
                env.reset(seed=np.asarray([i], np.int64), options={"reset_mask": mask})
            else:
                env.reset(options={"reset_mask": mask})
            times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(args.episode_steps):
        env.step(rng.integers(0, 4, args.num_envs))
    steps_ms = (time.perf_counter() - start) * 1000
    env.close()
    seeded_ms = float(np.median(seeded) * 1000)
    unseeded_ms = float(np.median(unseeded) * 1000)
    print(f"{args.game}: seeded reset {seeded_ms:.2f} ms, unseeded {unseeded_ms:.2f} ms "
          f"(median of {args.resets} partial resets of 1 of {args.num_envs} "
          f"sub-environments); {args.episode_steps} steps of all sub-environments: "
          f"{steps_ms:.0f} ms")
    print(json.dumps({
        "game": args.game, "num_envs": args.num_envs,
        "seeded_reset_ms": round(seeded_ms, 3), "unseeded_reset_ms": round(unseeded_ms, 3),
        "seeded_over_unseeded": round(seeded_ms / unseeded_ms, 2),
        "episode_steps_ms": round(steps_ms, 1),
        "seeded_reset_share_of_episode": round((seeded_ms - unseeded_ms) / steps_ms, 4),
    }))


if __name__ == "__main__":
    main()

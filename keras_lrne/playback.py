"""Play an exported keras-lrne policy (`keras-lrne play`): load, validate, run, record."""

import json
import os
import re

import numpy as np

from keras_lrne.export import POLICY_MARKER


def find_policy_dir(directory):
    """Returns the policy directory inside `directory` (itself, or its `policy/` folder).

    Accepts both a directory written by `keras_lrne.export_policy` and the output directory
    of a `keras-lrne atari|carracing|control` run, which holds one in `policy/`.

    Raises:
        ValueError: if neither holds a keras-lrne policy, naming what was looked for.
    """
    directory = os.fspath(directory)
    for candidate in (directory, os.path.join(directory, "policy")):
        if os.path.isfile(os.path.join(candidate, POLICY_MARKER)):
            return candidate
    if not os.path.isdir(directory):
        raise ValueError(
            "Received an invalid value for `DIR`, expected a directory holding a keras-lrne "
            f"policy. No such directory: DIR={directory!r}"
        )
    raise ValueError(
        f"{directory!r} is not a keras-lrne policy: it holds no {POLICY_MARKER} (nor does "
        f"{os.path.join(directory, 'policy')!r}). Export one with "
        "`keras_lrne.export_policy(model, task, dir)` or a `keras-lrne atari|carracing|"
        "control` run (it writes OUTPUT/policy)."
    )


def load_policy(directory):
    """Loads an exported policy: returns `(serve, marker)`.

    Args:
        directory: a policy directory or a run's output directory (see `find_policy_dir`).

    Returns:
        `serve`, a callable mapping a batch of raw observations to a numpy batch of
        actions, and the policy's `keras_lrne_policy.json` contents as a dict.
    """
    import tensorflow as tf

    path = find_policy_dir(directory)
    with open(os.path.join(path, POLICY_MARKER)) as f:
        try:
            marker = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path!r} is not a valid keras-lrne policy: its {POLICY_MARKER} cannot be "
                f"read ({error})."
            ) from None
    if marker.get("format") != "keras_lrne_policy":
        raise ValueError(
            f"{path!r} is not a keras-lrne policy: {POLICY_MARKER} has format="
            f"{marker.get('format')!r}, expected 'keras_lrne_policy'."
        )
    loaded = tf.saved_model.load(path)
    dtype = marker["observation_dtype"]

    def serve(observations):
        return np.asarray(loaded.serve(np.asarray(observations, dtype)))

    return serve, marker


def _atari_game(env_id):
    """`"ALE/Frostbite-v5"`, `"FrostbiteNoFrameskip-v4"`, `"Frostbite"` -> `"Frostbite"`."""
    name = env_id.split("/")[-1]
    name = re.sub(r"-v\d+$", "", name)
    return re.sub(r"(NoFrameskip|Deterministic)$", "", name)


def make_play_env(marker, env_id=None, max_episode_steps=None, render=False):
    """Builds a one-environment vector env whose raw observations the policy accepts.

    Returns:
        `(vector_env, render_fn)`: the env follows the rollout engine's protocol
        (`reset(seeds, count)`, `step(actions, active)`); `render_fn()` returns the current
        RGB frame (the full-resolution render where the env has one, else the last
        observed frame).
    """
    from keras_lrne import tasks

    kind = marker.get("kind", "gym")
    env_id = env_id or marker.get("env")
    if not env_id:
        raise ValueError(
            "The policy was evolved on an environment factory, not an id: pass the "
            "environment with `--env ENV_ID`. Received: --env=None"
        )
    cap = max_episode_steps or marker.get("max_episode_steps")
    if kind == "atari":
        settings = marker.get("atari", {})
        task = tasks.Atari(_atari_game(env_id), max_episode_steps=cap or 2500,
                           version=settings.get("version", "v4"),
                           noop_max=settings.get("noop_max", 30),
                           full_action_space=settings.get("full_action_space", False),
                           num_envs=1)
        env = task.make_vector_env(1)
        last = {}

        def reset(seeds, count):
            last["obs"] = env.reset(seeds, count)
            return last["obs"]

        def step(actions, active):
            out = env.step(actions, active)
            last["obs"] = out[0]
            return out

        def render():
            return np.asarray(last["obs"])[0, -1]

        return _Adapter(env, reset, step, render), task.observation_space, cap
    gymnasium = tasks.environment._require_gymnasium()
    tasks.environment.check_env_id(env_id, "--env")
    kwargs = dict(marker.get("env_kwargs") or {})
    if render:
        kwargs["render_mode"] = "rgb_array"
    if cap:
        kwargs["max_episode_steps"] = int(cap)
    single = gymnasium.make(env_id, **kwargs)
    if kind == "carracing":
        single = gymnasium.wrappers.FrameStackObservation(single, 4)
    env = tasks.environment.ListVectorEnv([single])
    return _Adapter(env, env.reset, env.step, single.render), single.observation_space, cap


class _Adapter:
    def __init__(self, env, reset, step, render):
        self.env, self.reset, self.step, self.render = env, reset, step, render

    def close(self):
        self.env.close()


def play(directory, env=None, *, episodes=1, seed=0, max_episode_steps=None, record=None,
         fps=30):
    """Plays `episodes` episodes with an exported policy and returns their returns.

    Args:
        directory: a policy directory (`keras_lrne.export_policy`) or a run's output
            directory holding one in `policy/`.
        env: gymnasium id to play (default: the one the policy was evolved on). For Atari
            policies, a game name or id (`"Pong"`, `"ALE/Pong-v5"`).
        episodes: number of episodes.
        seed: reset seed of the first episode (episode `i` uses `seed + i`).
        max_episode_steps: step cap (default: the run's cap).
        record: optional path of a GIF of the first episode.
        fps: frames per second of the GIF (GIF frame times are multiples of 10 ms: 30 fps
            is stored as 30 ms per frame).

    Returns:
        A list of `episodes` episode returns.

    Example:

    >>> keras_lrne.playback.play("lrne_output/control", episodes=3)
    [1520.3, 1498.7, 1533.0]
    """
    for name, value in (("episodes", episodes), ("fps", fps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(
                f"Received an invalid value for `{name}`, expected a positive integer. "
                f"Received: {name}={value!r}"
            )
    if record is not None and not str(record).lower().endswith(".gif"):
        raise ValueError(
            "Received an invalid value for `record`, expected a path ending in .gif. "
            f"Received: record={record!r}"
        )
    serve, marker = load_policy(directory)
    venv, space, cap = make_play_env(marker, env, max_episode_steps, render=record is not None)
    expected = tuple(marker["observation_shape"])
    if tuple(space.shape) != expected:
        venv.close()
        raise ValueError(
            f"The environment {env or marker.get('env')!r} returns observations of shape "
            f"{tuple(space.shape)}, but the policy expects {expected} (it was evolved on "
            f"{marker.get('env')!r})."
        )
    frames, returns = [], []
    try:
        for episode in range(int(episodes)):
            obs = np.asarray(venv.reset([int(seed) + episode], 1))
            total, steps = 0.0, 0
            while True:
                if record is not None and episode == 0:
                    frames.append(_frame(venv.render()))
                action = serve(obs)
                obs, rewards, done, failed = venv.step(action, [0])
                total += float(rewards[0])
                steps += 1
                if done[0] or failed[0] or (cap and steps >= cap):
                    break
                obs = np.asarray(obs[0])[None]
            returns.append(total)
    finally:
        venv.close()
    if record is not None:
        _write_gif(frames, record, fps)
    return returns


def _frame(image, max_width=320):
    """An RGB frame as a small palette image (GIFs of long episodes stay small)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(image, np.uint8))
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)))
    return img.convert("P", palette=Image.Palette.ADAPTIVE)


def _write_gif(frames, path, fps):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:],
                   duration=10 * max(1, round(100 / fps)), loop=0)  # GIFs count in 10 ms

"""Play an exported keras-lrne policy (`keras-lrne play`): load, validate, run, record."""

import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from keras_lrne import _replay
from keras_lrne._validation import check_int
from keras_lrne.export import POLICY_MARKER


class RecordError(RuntimeError):
    """Raised when `play(..., record=...)` cannot render the episode."""


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
    from keras_lrne._tf import import_tensorflow

    tf = import_tensorflow("Playing an exported policy")

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
    try:
        loaded = tf.saved_model.load(path)
    except Exception as error:  # OSError, IndexError, tf.errors.OpError, DecodeError, ...
        raise ValueError(
            f"The policy in {path!r} could not be loaded: its SavedModel files "
            "(saved_model.pb, variables/) are missing, truncated or corrupt "
            f"({type(error).__name__}: {str(error)[:300]}). Export it again."
        ) from error
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
    gymnasium = tasks.environment.require_gymnasium()
    tasks.environment.check_env_id(env_id, "--env")
    kwargs = dict(marker.get("env_kwargs") or {})
    if render and kind == "carracing":  # gymnasium ids replay in a separate process
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
    check_int("episodes", episodes)
    check_int("fps", fps)
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
    # Atari frames come from the observations and CarRacing renders in this process;
    # other gymnasium envs (MuJoCo's EGL rendering crashes beside TensorFlow) are
    # replayed from the first episode's actions in a fresh process that renders them.
    replay = record is not None and marker.get("kind", "gym") == "gym"
    frames, returns, actions_taken = [], [], []
    try:
        for episode in range(int(episodes)):
            obs = np.asarray(venv.reset([int(seed) + episode], 1))
            total, steps = 0.0, 0
            while True:
                action = serve(obs)
                if record is not None and episode == 0:
                    if replay:
                        actions_taken.append(np.asarray(action)[0])
                    else:
                        frames.append(_replay.to_frame(_render(venv, record)))
                obs, rewards, done, failed = venv.step(action, [0])
                total += float(rewards[0])
                steps += 1
                if done[0] or failed[0] or (cap and steps >= cap):
                    break
                obs = np.asarray(obs[0])[None]
            returns.append(total)
    finally:
        venv.close()
    if replay:
        _replay_in_subprocess(marker, env or marker.get("env"), cap, int(seed), actions_taken,
                              record, fps)
    elif record is not None:
        _replay.write_gif(frames, record, fps)
    return returns


def _replay_in_subprocess(marker, env_id, cap, seed, actions, record, fps):
    kwargs = dict(marker.get("env_kwargs") or {})
    if cap:
        kwargs["max_episode_steps"] = int(cap)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(os.path.join(tmp, "actions.npy"), np.stack(actions))
        spec = {"env": env_id, "env_kwargs": kwargs, "seed": seed, "fps": fps,
                "actions": os.path.join(tmp, "actions.npy"),
                "path": os.path.abspath(record)}
        with open(os.path.join(tmp, "spec.json"), "w") as f:
            json.dump(spec, f)
        result = subprocess.run([sys.executable, _replay.__file__,
                                 os.path.join(tmp, "spec.json")],
                                capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        detail = lines[-1] if lines else f"exit code {result.returncode}"
        raise RecordError(
            f"Cannot record {record!r}: rendering the episode failed ({detail}). On a "
            "machine without a display, MuJoCo needs an off-screen OpenGL (MUJOCO_GL=egl "
            "or MUJOCO_GL=osmesa); or play without --record."
        )


def _render(venv, record):
    try:
        return venv.render()
    except Exception as error:
        raise RecordError(
            f"Cannot record {record!r}: the environment failed to render a frame "
            f"({type(error).__name__}: {error}). On a machine without a display, MuJoCo "
            "needs an off-screen OpenGL (MUJOCO_GL=egl or MUJOCO_GL=osmesa); or play "
            "without --record."
        ) from None

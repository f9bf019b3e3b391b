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

#: The keys of `keras_lrne_policy.json` that loading and playing a policy need.
POLICY_KEYS = ("observation_shape", "observation_dtype")


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


def check_run_finished(directory):
    """Refuses `directory` when it is (or is the `policy/` folder of) the output directory
    of a `keras-lrne` run that has not finished: its policy may be missing or an earlier
    run's (see `keras_lrne.commands.run_directory.check_finished`)."""
    from keras_lrne.commands.run_directory import check_finished

    directory = os.path.abspath(os.fspath(directory))
    check_finished(directory)
    if os.path.basename(directory) == "policy":
        check_finished(os.path.dirname(directory))


def _check_marker(marker, path, keys):
    """Raises a ValueError naming the marker file and every key of `keys` it lacks."""
    missing = sorted(key for key in keys if key not in marker)
    if missing:
        raise ValueError(
            f"{os.path.join(path, POLICY_MARKER)!r} is not a valid keras-lrne policy "
            f"marker: it lacks the key(s) {', '.join(map(repr, missing))}. Export the "
            "policy again (keras_lrne.export_policy, or the run that wrote it)."
        )


def load_policy(directory):
    """Loads an exported policy: returns `(serve, marker)`.

    Args:
        directory: a policy directory or a run's output directory (see `find_policy_dir`);
            a run's directory must hold a finished run (its `summary.json`).

    Returns:
        `serve`, a callable mapping a batch of raw observations to a numpy batch of
        actions, and the policy's `keras_lrne_policy.json` contents as a dict.
    """
    from keras_lrne._tf import import_tensorflow

    check_run_finished(directory)
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
    if not isinstance(marker, dict) or marker.get("format") != "keras_lrne_policy":
        found = marker.get("format") if isinstance(marker, dict) else marker
        raise ValueError(
            f"{path!r} is not a keras-lrne policy: {POLICY_MARKER} has format="
            f"{found!r}, expected 'keras_lrne_policy'."
        )
    _check_marker(marker, path, POLICY_KEYS)
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
    if kind == "gymnax":
        return _gymnax_play_env(env_id, cap)
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


def _gymnax_play_env(env_id, cap):
    """One gymnax environment behind the rollout protocol, stepped from Python: episode
    seed `s` plays the episode `JaxEnvironment`'s compiled rollout plays for `s` (its
    reset and step keys are those of `keras_lrne.backend.jax.rollout.episode_keys`)."""
    from keras_lrne.backend.jax.rollout import episode_keys
    from keras_lrne.tasks.jax_environment import _gymnasium_space, require_gymnax

    gymnax = require_gymnax()
    import jax

    name = env_id[len("gymnax:"):] if env_id.startswith("gymnax:") else env_id
    if name not in gymnax.registered_envs:
        raise ValueError(
            "Received an invalid value for `--env`, expected a gymnax environment name "
            f"(the policy was evolved on a gymnax environment), one of "
            f"{', '.join(gymnax.registered_envs)}. Received: --env={env_id!r}"
        )
    env, params = gymnax.make(name)
    discrete = hasattr(env.action_space(params), "n")
    episode = {}

    def reset(seeds, count):
        reset_key, episode["root"] = episode_keys(int(seeds[0]))
        obs, episode["state"] = env.reset(reset_key, params)
        episode["t"] = 0
        return np.asarray(obs)[None]

    def step(actions, active):
        action = np.asarray(actions)[0]
        action = int(action) if discrete else action.astype(np.float32)
        key = jax.random.fold_in(episode["root"], episode["t"])
        obs, episode["state"], reward, terminated, truncated, _ = env.step(
            key, episode["state"], action, params)
        episode["t"] += 1
        obs, reward = np.asarray(obs), float(np.asarray(reward).reshape(-1)[0])
        done = bool(np.any(terminated)) or bool(np.any(truncated))
        failed = not (np.isfinite(reward) and np.isfinite(obs).all())
        return obs[None], [reward], [done], [failed]

    def render():
        raise RecordError(
            f"Cannot record an episode of the gymnax environment {name!r}: keras-lrne "
            "renders gymnasium, Atari and CarRacing episodes only; play without --record "
            f"(or record the gymnasium counterpart with --env {name})."
        )

    space = _gymnasium_space(env.observation_space(params), "observation")
    return _Adapter(_Closed(), reset, step, render), space, cap


class _Closed:
    def close(self):
        pass


class _Adapter:
    def __init__(self, env, reset, step, render):
        self.env, self.reset, self.step, self.render = env, reset, step, render

    def close(self):
        self.env.close()


def play(directory, env=None, *, episodes=1, seed=0, max_episode_steps=None, record=None,
         fps=30, seeds=None):
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
        seeds: optional list of reset seeds, one per episode (then `episodes` and `seed`
            are ignored).

    Returns:
        A list of `episodes` episode returns.

    Example:

    >>> keras_lrne.playback.play("lrne_output/control", episodes=3)
    [1520.3, 1498.7, 1533.0]
    """
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        episodes = len(seeds)
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
    if record is not None and marker.get("kind") == "gymnax":
        venv.close()
        venv.render()  # raises the RecordError that says why
    replay = record is not None and marker.get("kind", "gym") == "gym"
    frames, returns, actions_taken = [], [], []
    try:
        for episode in range(int(episodes)):
            reset_seed = seeds[episode] if seeds is not None else int(seed) + episode
            obs = np.asarray(venv.reset([reset_seed], 1))
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


#: Held-out episodes `evaluate` plays by default, per kind of policy: Atari's usual 30
#: episodes with random no-op starts, 20 CarRacing tracks, 10 seeds for other control.
EVALUATION_EPISODES = {"atari": 30, "carracing": 20, "gym": 10, "gymnax": 10}

#: Per Atari game: the episode returns of a uniformly random policy and of the human
#: tester, as published with DQN (Mnih et al. 2015, Nature; 30 no-op starts) and used by
#: DQN Zoo and rliable, for human-normalised scores `(x - random) / (human - random)`.
ATARI_REFERENCES = {"frostbite": (65.2, 4334.7), "kangaroo": (52.0, 3035.0)}

EVALUATION_FILE = "evaluation.json"


def _run_directory(directory):
    """The run directory around a policy (the directory itself, or the parent of its
    `policy/` folder), when it holds a `summary.json`; else None."""
    path = os.path.abspath(find_policy_dir(directory))
    for candidate in (os.path.dirname(path), path):
        if os.path.isfile(os.path.join(candidate, "summary.json")):
            return candidate
    return None


def training_seeds(run_args):
    """The reset seeds a run's training episodes used (every generation, both selection
    stages), from its settings (`summary.json`'s `args`); empty when unknown."""
    try:
        seed, generations = int(run_args["seed"]), int(run_args["generations"])
    except (KeyError, TypeError, ValueError):
        return set()
    from keras_lrne.tasks.environment import episode_seeds

    # Each (generation, stage) list is a prefix of a longer one: take at least 64.
    count = max(int(run_args.get("episodes") or 1),
                int(run_args.get("reevaluate_episodes") or 0), 64)
    seeds = set()
    for generation in range(generations + 1):
        for stage in (0, 1):
            seeds.update(episode_seeds(seed, generation, stage, count))
    return seeds


def evaluate(directory, episodes=None, seed=0, write=True):
    """Plays a saved elite on held-out episodes: the unbiased estimate of its return.

    A run's logged `episode_return` is the best member's return on the generation's
    training episodes: a maximum over the population, biased upwards by selection. This
    plays the exported elite on new episodes instead: reset seeds drawn from `seed` on a
    stream training never uses, and any seed the run trained on (computed from its
    `summary.json`) is skipped. Atari episodes start with the task's random no-ops
    (0 to `noop_max - 1`, seeded), the usual protocol; CarRacing seeds are new tracks.

    Args:
        directory: a run's output directory (it holds `policy/`) or a policy directory.
        episodes: how many (default: `EVALUATION_EPISODES` of the policy's kind: 30 for
            Atari, 20 for CarRacing, 10 for other environments).
        seed: the evaluation seed (the same seed gives the same episodes).
        write: write `evaluation.json` beside the run's `summary.json` (or into the
            policy directory).

    Returns:
        A dict: `env`, `kind`, `episodes`, `seed`, `episode_seeds`, `returns`,
        `mean_return`, `std_return`, `ci95_half_width`, `excluded_training_seeds`
        (seeds skipped because training used them), and for Atari games with published
        references `random_return`, `human_return` and `human_normalized_score` (of the
        mean).

    Example:

    >>> keras_lrne.playback.evaluate("lrne_output/atari", episodes=30)["mean_return"]
    """
    from keras_lrne._validation import check_int
    from keras_lrne.comparison import summarize

    check_int("seed", seed, minimum=0)
    _, marker = load_policy(directory)
    kind = marker.get("kind", "gym")
    episodes = EVALUATION_EPISODES.get(kind, 10) if episodes is None else episodes
    check_int("episodes", episodes)
    run_dir = _run_directory(directory)
    run_args = {}
    if run_dir is not None:
        with open(os.path.join(run_dir, "summary.json")) as f:
            run_args = json.load(f).get("args") or {}
    used = training_seeds(run_args)
    rng = np.random.default_rng([int(seed), 3])  # stream 3: never a training stream
    chosen, excluded = [], 0
    while len(chosen) < episodes:
        candidate = int(rng.integers(0, 2**31 - 1))
        if candidate in used or candidate in chosen:
            excluded += candidate in used
            continue
        chosen.append(candidate)
    returns = play(directory, seeds=chosen)
    stats = summarize(returns)
    result = {"env": marker.get("env"), "kind": kind, "episodes": int(episodes),
              "seed": int(seed), "episode_seeds": chosen, "returns": returns,
              "mean_return": stats["mean"], "std_return": stats["std"],
              "ci95_half_width": stats["ci_half_width"],
              "excluded_training_seeds": excluded}
    if kind == "atari":
        game = _atari_game(str(marker.get("env", ""))).lower()
        if game in ATARI_REFERENCES:
            random_return, human = ATARI_REFERENCES[game]
            result.update(random_return=random_return, human_return=human,
                          human_normalized_score=(stats["mean"] - random_return)
                          / (human - random_return))
    if write:
        from keras_lrne import checkpoint

        out = run_dir or find_policy_dir(directory)
        checkpoint.atomic_write(os.path.join(out, EVALUATION_FILE),
                                json.dumps(result, indent=2))
    return result

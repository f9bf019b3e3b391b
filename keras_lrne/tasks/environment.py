"""`Environment`: evolve policies on any gymnasium environment."""

import difflib
import math

import numpy as np

from keras_lrne._optional import require
from keras_lrne._validation import check_int
from keras_lrne.tasks.base import Task

ACTION_TRANSFORMS = ("auto", "argmax", "identity", "clip", "tanh")


def require_gymnasium():
    return require("gymnasium", "Environment tasks", "rl")


def check_env_id(env_id, argument="env_id"):
    """Raises a clear error (with close matches) for an unregistered gymnasium id."""
    gymnasium = require_gymnasium()
    registry = gymnasium.envs.registry
    if env_id in registry:
        return
    if env_id.startswith("ALE/") or "NoFrameskip" in env_id or "Deterministic" in env_id:
        try:
            import ale_py

            gymnasium.register_envs(ale_py)
        except ImportError as error:
            raise ImportError(
                f"`{argument}`={env_id!r} needs ale-py. Install the RL extra: "
                'pip install "keras-lrne[rl]"'
            ) from error
        if env_id in registry:
            return
    matches = difflib.get_close_matches(env_id, list(registry), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(repr(m) for m in matches)}?" if matches else ""
    raise ValueError(
        f"Received an unknown gymnasium environment id for `{argument}`.{hint} "
        f"Received: {argument}={env_id!r}"
    )


def episode_seeds(seed, generation, stage, episodes):
    """The reset seeds of a run's episodes for one generation and selection stage: the
    first `episodes` draws of a generator of `(seed, generation, stage)`, so a longer
    list starts with a shorter one (`Environment.episode_seeds`; held-out evaluation
    recomputes them to avoid them)."""
    rng = np.random.default_rng([int(seed), 2, int(generation), int(stage)])
    return rng.integers(0, 2**31 - 1, size=int(episodes)).tolist()


def _check_is_env(env, argument_value, argument="env"):
    """Raises a clear error when an environment factory returned something else."""
    gymnasium = require_gymnasium()
    if isinstance(env, gymnasium.Env) or all(
        hasattr(env, name) for name in ("reset", "step", "observation_space", "action_space")
    ):
        return
    raise ValueError(
        f"Received an invalid value for `{argument}`: a callable `{argument}` must return a "
        f"`gymnasium.Env` (with `reset`, `step`, `observation_space` and `action_space`), "
        f"but it returned {env!r} of type {type(env).__name__}. "
        f"Received: {argument}={argument_value!r}"
    )


class RunningNormalizer:
    """Running mean/std of observations (Chan et al. parallel update), host side.

    Statistics are frozen during a generation (every member sees the same normalisation)
    and updated from the generation's observations afterwards.
    """

    def __init__(self, shape, clip=10.0, epsilon=1e-8):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 0.0
        self.clip = clip
        self.epsilon = epsilon

    def update(self, batch):
        batch = np.asarray(batch, np.float64).reshape((-1, *self.mean.shape))
        # A NaN or inf observation would poison the statistics for the rest of the run.
        batch = batch[np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)]
        if batch.shape[0] == 0:
            return
        b_mean, b_var, b_count = batch.mean(0), batch.var(0), batch.shape[0]
        total = self.count + b_count
        delta = b_mean - self.mean
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    def __call__(self, obs):
        if self.count == 0:
            return np.asarray(obs, np.float32)
        out = (obs - self.mean) / np.sqrt(self.var + self.epsilon)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def get_state(self):
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": self.count}

    def set_state(self, state):
        self.mean = np.asarray(state["mean"], np.float64)
        self.var = np.asarray(state["var"], np.float64)
        self.count = float(state["count"])


class Environment(Task):
    """Evolve a policy on a gymnasium environment (loss = -episode return).

    Every member plays `episodes` episodes; all members of a generation get the same
    episode seeds (a fair comparison) and the seeds change every generation. The policy
    forward of all live members is one compiled, vectorised call per step; members whose
    episodes ended stop stepping and cost nothing more.

    Args:
        env: a gymnasium environment id (`"CartPole-v1"`, `"HalfCheetah-v5"`, ...) or a
            callable returning a `gymnasium.Env`.
        episodes: episodes per member per generation (their mean return is the fitness).
        max_episode_steps: step cap per episode (None: the environment's own limit).
        action_transform: how model outputs become actions: `"argmax"` for `Discrete`
            spaces, `"identity"`, `"clip"` (to the Box bounds) or `"tanh"` (squashed and
            rescaled to the bounds) for `Box` spaces; `"auto"` picks argmax / clip.
        normalize_observations: running observation normalisation (vector observations).
        num_envs: environments stepped together (a chunk of member-episodes); default
            `min(population * episodes, 64)`.
        env_kwargs: keyword arguments for `gymnasium.make`.
        reevaluate_top: two-stage selection (the paper's CarRacing setting), for
            strategies that select parents by truncation (`GA`): after all members played
            their episodes, the best `reevaluate_top`
            play `reevaluate_episodes` more, their losses become the mean over all their
            episodes, and the other members count as the worst (so only re-evaluated
            members can become the GA's parents: give at least `num_parents`). None
            (default) disables it.
        reevaluate_episodes: episodes of the second stage (the paper: 4).

    Example:

    >>> task = keras_lrne.tasks.Environment("CartPole-v1", episodes=2)
    >>> model = keras_lrne.Sequential([keras.Input(task.input_shape),
    ...                                keras.layers.Dense(task.num_outputs)])
    >>> history = model.evolve(task, strategy=keras_lrne.strategies.GA(16, 4))
    """

    #: Environment tasks report member_evals_per_second and frames per second.
    tokens_per_sample = None
    #: Scored by playing episodes, not with the model's compiled loss.
    supervised = False
    #: Whether `make_vector_env` steps in native threads that release the GIL.
    threaded_vector_env = False
    #: Rollout lanes: 1 (stepping and the policy alternate), 2 (half the environments
    #: step in a thread while the policy runs on the other half; needs 8+ environments)
    #: or "auto" (2 for vector environments that step in native threads).
    rollout_lanes = "auto"

    def __init__(self, env, *, episodes=1, max_episode_steps=None, action_transform="auto",
                 normalize_observations=False, num_envs=None, env_kwargs=None,
                 reevaluate_top=None, reevaluate_episodes=None):
        check_int("episodes", episodes)
        self._set_reevaluation(reevaluate_top, reevaluate_episodes)
        check_int("max_episode_steps", max_episode_steps, allow_none=True)
        check_int("num_envs", num_envs, allow_none=True)
        if action_transform not in ACTION_TRANSFORMS:
            raise ValueError(
                f"Received an invalid value for `action_transform`, expected one of "
                f"{ACTION_TRANSFORMS}. Received: action_transform={action_transform!r}"
            )
        if isinstance(env, str):
            check_env_id(env, "env")
        elif not callable(env):
            raise ValueError(
                "Received an invalid value for `env`, expected a gymnasium id or a callable "
                f"returning a gymnasium.Env. Received: env={env!r}"
            )
        self.env = env
        self.episodes = int(episodes)
        self.max_episode_steps = max_episode_steps
        self.num_envs = num_envs
        self.env_kwargs = dict(env_kwargs or {})
        probe = self.make_env()
        _check_is_env(probe, env)
        self.observation_space = probe.observation_space
        self.action_space = probe.action_space
        spec_steps = getattr(getattr(probe, "spec", None), "max_episode_steps", None)
        probe.close()
        self.episode_cap = max_episode_steps or spec_steps or 10_000
        self._check_spaces()
        self.action_transform = self._resolve_transform(action_transform)
        self.normalizer = (
            RunningNormalizer(self.observation_space.shape) if normalize_observations else None
        )

    def _set_reevaluation(self, reevaluate_top, reevaluate_episodes):
        if (reevaluate_top is None) != (reevaluate_episodes is None):
            raise ValueError(
                "`reevaluate_top` and `reevaluate_episodes` go together: give both or "
                f"neither. Received: reevaluate_top={reevaluate_top!r}, "
                f"reevaluate_episodes={reevaluate_episodes!r}"
            )
        self.reevaluate_top = check_int("reevaluate_top", reevaluate_top, allow_none=True)
        self.reevaluate_episodes = check_int("reevaluate_episodes", reevaluate_episodes,
                                             allow_none=True)

    # -- spaces ----------------------------------------------------------------------
    def _check_spaces(self):
        gymnasium = require_gymnasium()
        spaces = gymnasium.spaces
        if not isinstance(self.observation_space, spaces.Box):
            raise ValueError(
                "Only Box observation spaces (vectors or images) are supported. Received: "
                f"observation_space={self.observation_space}"
            )
        if not isinstance(self.action_space, (spaces.Discrete, spaces.Box)):
            raise ValueError(
                "Only Discrete and Box action spaces are supported. Received: "
                f"action_space={self.action_space}"
            )

    def _resolve_transform(self, transform):
        gymnasium = require_gymnasium()
        discrete = isinstance(self.action_space, gymnasium.spaces.Discrete)
        if transform == "auto":
            return "argmax" if discrete else "clip"
        if discrete != (transform == "argmax"):
            raise ValueError(
                f"`action_transform`={transform!r} does not fit the action space "
                f"{self.action_space}: use 'argmax' for Discrete spaces and 'identity', "
                "'clip' or 'tanh' for Box spaces."
            )
        return transform

    @property
    def input_shape(self):
        """Shape of one model input (an observation after `preprocess`)."""
        return tuple(self.observation_space.shape)

    @property
    def num_outputs(self):
        """Model outputs the task expects: actions (Discrete) or action dimensions (Box)."""
        if self.action_transform == "argmax":
            return int(self.action_space.n)
        return int(np.prod(self.action_space.shape))

    # -- hooks for subclasses ---------------------------------------------------------
    def make_env(self):
        """Creates one environment with all wrappers (called once per env slot)."""
        gymnasium = require_gymnasium()
        if isinstance(self.env, str):
            kwargs = dict(self.env_kwargs)
            if self.max_episode_steps:
                kwargs["max_episode_steps"] = self.max_episode_steps
            return gymnasium.make(self.env, **kwargs)
        return self.env()

    def make_vector_env(self, num_envs):
        """Creates the vector of environments the rollout engine steps."""
        return ListVectorEnv([self.make_env() for _ in range(num_envs)])

    def preprocess(self, obs):
        """Turns a batch of raw observations into float32 model inputs."""
        obs = np.asarray(obs, np.float32)
        return self.normalizer(obs) if self.normalizer is not None else obs

    def host_input(self, obs):
        """What the rollout engine sends to the device for a batch of raw observations.

        Defaults to `preprocess(obs)`; tasks with large raw observations (frames) may send
        them raw and convert them in `device_input`, inside the compiled policy call.
        """
        return self.preprocess(obs)

    def device_input(self, x):
        """Turns one member's `host_input` row into the model input (keras.ops, compiled).

        Must agree with `preprocess`: `device_input(host_input(obs)[i]) ==
        preprocess(obs)[i]`. Defaults to the identity.
        """
        return x

    def export_input(self, obs):
        """`preprocess` in keras.ops for a batch of raw observations (exported policies)."""
        from keras import ops

        x = ops.cast(obs, "float32")
        if self.normalizer is not None and self.normalizer.count:
            mean = ops.convert_to_tensor(self.normalizer.mean.astype("float32"))
            std = ops.convert_to_tensor(
                np.sqrt(self.normalizer.var + self.normalizer.epsilon).astype("float32")
            )
            x = ops.clip((x - mean) / std, -self.normalizer.clip, self.normalizer.clip)
        return x

    def export_output(self, outputs):
        """`postprocess` in keras.ops: model outputs -> actions (exported policies)."""
        from keras import ops

        outputs = ops.reshape(ops.cast(outputs, "float32"), (ops.shape(outputs)[0], -1))
        if self.action_transform == "argmax":
            return ops.argmax(outputs, axis=-1)
        outputs = ops.reshape(outputs, (-1, *self.action_space.shape))
        low = ops.convert_to_tensor(self.action_space.low.astype("float32"))
        high = ops.convert_to_tensor(self.action_space.high.astype("float32"))
        if self.action_transform == "tanh":
            return low + (ops.tanh(outputs) + 1.0) * 0.5 * (high - low)
        if self.action_transform == "clip":
            return ops.clip(outputs, low, high)
        return outputs

    def observe(self, raw_observations):
        """Called once per generation with a sample of raw observations (normaliser)."""
        if self.normalizer is not None and len(raw_observations):
            self.normalizer.update(np.concatenate(raw_observations))

    def postprocess(self, outputs):
        """Turns a batch of model outputs into environment actions (numpy)."""
        outputs = np.asarray(outputs)
        if self.action_transform == "argmax":
            return outputs.reshape(len(outputs), -1).argmax(-1)
        shape = (len(outputs), *self.action_space.shape)
        actions = outputs.reshape(shape).astype(np.float32)
        low, high = self.action_space.low, self.action_space.high
        if self.action_transform == "tanh":
            actions = low + (np.tanh(actions) + 1.0) * 0.5 * (high - low)
        elif self.action_transform == "clip":
            actions = np.clip(actions, low, high)
        return actions

    def should_stop(self, rewards):
        """Early-termination rule over an episode's rewards so far (default: never)."""
        return False

    def episode_seeds(self, seed, generation, stage=0, episodes=None):
        """The reset seeds of a generation's episodes, shared by all members.

        Args:
            seed: the run seed.
            generation: the generation.
            stage: 0 for the evaluation of all members, 1 for the second stage of
                two-stage selection (new episodes).
            episodes: how many (default `self.episodes`).
        """
        episodes = self.episodes if episodes is None else int(episodes)
        return episode_seeds(seed, generation, stage, episodes)

    #: Attributes that only change speed, not results: left out of `fingerprint()`.
    PERFORMANCE_SETTINGS = ("num_envs", "num_threads", "rollout_lanes")

    def fingerprint(self):
        """Every setting of the task (env, episodes, step caps, transforms, env kwargs,
        normalisation, spaces ...), so a resume with other settings is refused."""
        settings = {}
        for key, value in sorted(vars(self).items()):
            if key.startswith("_") or key in self.PERFORMANCE_SETTINGS or key == "normalizer":
                continue
            if callable(value) and not isinstance(value, type):
                module = getattr(value, "__module__", "")
                value = f"{module}.{getattr(value, '__qualname__', value)}"
            elif not isinstance(value, (str, int, float, bool, type(None), list, tuple, dict)):
                value = str(value)
            settings[key] = value
        settings["normalize_observations"] = self.normalizer is not None
        return {"class": type(self).__name__, "settings": settings}

    def get_state(self):
        return {"normalizer": self.normalizer.get_state() if self.normalizer else None}

    def set_state(self, state):
        if self.normalizer is not None and state.get("normalizer"):
            self.normalizer.set_state(state["normalizer"])

    def __repr__(self):
        env = self.env if isinstance(self.env, str) else getattr(self.env, "__name__", "env")
        return (f"{self.__class__.__name__}({env!r}, episodes={self.episodes}, "
                f"action_transform={self.action_transform!r})")


class ListVectorEnv:
    """A list of gymnasium environments stepped one by one, only those still running.

    Unlike `gymnasium.vector.SyncVectorEnv` it never steps an environment whose episode
    has ended, so a population's finished members cost nothing.
    """

    def __init__(self, envs):
        self.envs = envs
        self.num_envs = len(envs)

    def reset(self, seeds, count):
        """Resets the first `count` environments with one seed each; returns observations."""
        return self.reset_at(range(count), seeds)

    def reset_at(self, indices, seeds):
        """Resets the environments at `indices` with one seed each; returns observations."""
        return np.stack([self.envs[i].reset(seed=int(s))[0] for i, s in zip(indices, seeds)])

    def try_reset_at(self, indices, seeds):
        """`reset_at` where a raising environment fails alone (as in `step`).

        Returns:
            `(observations, failed, error)`: the observations of the environments that
            reset (a list aligned with `indices[~failed]`), a boolean array aligned with
            `indices`, and the first exception raised (or None).
        """
        obs, failed, error = [], [], None
        for i, s in zip(indices, seeds):
            try:
                obs.append(self.envs[i].reset(seed=int(s))[0])
                failed.append(False)
            except Exception as exc:  # a crashing environment fails one member, not the run
                error = error or exc
                failed.append(True)
        return obs, np.asarray(failed, bool), error

    def step(self, actions, active):
        """Steps the envs at indices `active` with `actions` (aligned with `active`)."""
        obs, rewards, done, failed = [], [], [], []
        for i, action in zip(active, actions):
            try:
                o, r, terminated, truncated, _ = self.envs[i].step(action)
                r = float(r)
                bad = not math.isfinite(r)
            except Exception:  # a crashing environment fails one member, not the run
                o, r, terminated, truncated, bad = None, 0.0, True, False, True
            obs.append(o)
            rewards.append(r)
            done.append(bool(terminated or truncated))
            failed.append(bad)
        return obs, np.asarray(rewards), np.asarray(done), np.asarray(failed)

    def close(self):
        for env in self.envs:
            env.close()

"""`JaxEnvironment`: evolve policies on functional JAX environments (gymnax), on device."""

import keras
import numpy as np

from keras_lrne._optional import require
from keras_lrne._validation import check_int
from keras_lrne.tasks.base import Task
from keras_lrne.tasks.environment import ACTION_TRANSFORMS, Environment, RunningNormalizer


def require_gymnax():
    return require("gymnax", "JaxEnvironment tasks on gymnax environments", "gymnax")


def _gymnasium_space(space, argument):
    """A gymnasium space with the bounds of a gymnax `Discrete` or `Box` space."""
    spaces = require("gymnasium", "JaxEnvironment tasks", "gymnax").spaces
    if hasattr(space, "n") and tuple(getattr(space, "shape", ())) == ():
        return spaces.Discrete(int(space.n))
    if all(hasattr(space, name) for name in ("low", "high", "shape")):
        shape = tuple(int(d) for d in space.shape)
        low = np.broadcast_to(np.asarray(space.low, np.float32), shape)
        high = np.broadcast_to(np.asarray(space.high, np.float32), shape)
        return spaces.Box(low, high, shape, np.float32)
    raise ValueError(
        f"Only Discrete and Box {argument} spaces are supported. Received: "
        f"{argument}_space={space!r}"
    )


class JaxEnvironment(Task):
    """Evolve a policy on a functional JAX environment, episodes compiled on the device.

    The environment is a JAX program (gymnax's interface: `reset(key, params)` and
    `step(key, state, action, params)`), so on the JAX backend a whole generation, every
    member's episodes, is one compiled call: the environments reset from the
    generation's episode seeds, then a loop over steps (which stops when every episode
    has ended, or at `max_episode_steps`) runs the policy of every member
    (`model.stateless_call`, vectorised over members), turns its outputs into actions
    and steps every environment. No Python runs per step. Rewards are summed until each
    episode ends; a finished episode adds nothing more.

    As with `Environment`: every member plays `episodes` episodes, all members of a
    generation play the same episode seeds (they change every generation), the fitness
    is the mean return, and the logs hold `episode_return`, `mean_return`, `env_steps`
    (the steps played until each episode ended, summed) and `frames_per_second`. An
    action, reward or observation that is NaN or inf fails the member (loss +inf).

    Observation normalisation (`normalize_observations=True`) is `Environment`'s: running
    mean/std statistics, frozen within a generation (every member sees the same
    normalisation), applied inside the compiled call (clipped to +-10), and updated after
    the generation from a sample of the observations the policies saw (the first 8
    member-episodes' first 64 steps). The statistics are part of the task's state: a
    resumed run continues with them, and `keras_lrne.export_policy` bakes them in.

    Needs the JAX backend (`KERAS_BACKEND=jax`) and the `gymnax` extra
    (`pip install "keras-lrne[gymnax]"`). Not yet supported: `PopulationParallel`,
    `RayWorkers`, two-stage selection.

    Args:
        env: a gymnax environment name (`"CartPole-v1"`, `"Pendulum-v1"`, ...), the
            `(env, env_params)` pair `gymnax.make(name)` returns, or a gymnax
            environment.
        env_params: the environment's parameters (None: those `gymnax.make` returned,
            or `env.default_params`).
        episodes: episodes per member per generation (their mean return is the fitness).
        max_episode_steps: step cap per episode (None: the environment's own limit,
            `env_params.max_steps_in_episode`).
        action_transform: how model outputs become actions, as for `Environment`:
            `"argmax"` for `Discrete` spaces, `"identity"`, `"clip"` (to the Box bounds)
            or `"tanh"` (squashed and rescaled to the bounds) for `Box` spaces; `"auto"`
            picks argmax / clip.
        normalize_observations: running observation normalisation, as for
            `Environment` (`Control`'s default is True; the `keras-lrne control` command
            turns it on).

    Example:

    >>> task = keras_lrne.tasks.JaxEnvironment("CartPole-v1", max_episode_steps=200)
    >>> model = keras_lrne.Sequential([keras.Input(task.input_shape),
    ...                                keras.layers.Dense(task.num_outputs)])
    >>> history = model.evolve(task, strategy=keras_lrne.strategies.GA(64, 8),
    ...                        generations=10)
    """

    #: Scored by playing episodes, not with the model's compiled loss.
    supervised = False
    #: Episodes run inside one compiled JAX call (the task kind "jax_environment").
    on_device = True
    #: Members evaluated per second are logged; not a token task.
    tokens_per_sample = None
    #: No two-stage selection (yet).
    reevaluate_top = None
    reevaluate_episodes = None

    def __init__(self, env, env_params=None, episodes=1, max_episode_steps=None,
                 action_transform="auto", normalize_observations=False):
        if keras.config.backend() != "jax":
            raise RuntimeError(
                "`JaxEnvironment` runs a JAX program (the environment is stepped inside "
                "the compiled population call), so it needs the JAX backend: set "
                "`KERAS_BACKEND=jax` before importing Keras. Received: "
                f"KERAS_BACKEND={keras.config.backend()}"
            )
        self.episodes = check_int("episodes", episodes)
        if not isinstance(normalize_observations, bool):
            raise ValueError(
                "Received an invalid value for `normalize_observations`, expected a bool. "
                f"Received: normalize_observations={normalize_observations!r}"
            )
        check_int("max_episode_steps", max_episode_steps, allow_none=True)
        if action_transform not in ACTION_TRANSFORMS:
            raise ValueError(
                f"Received an invalid value for `action_transform`, expected one of "
                f"{ACTION_TRANSFORMS}. Received: action_transform={action_transform!r}"
            )
        gymnax = require_gymnax()
        if isinstance(env, str):
            self.name = env
            try:
                env, made_params = gymnax.make(env)
            except (ValueError, KeyError) as error:
                raise ValueError(
                    "Received an unknown gymnax environment name for `env`, expected one "
                    f"of gymnax.registered_envs, e.g. 'CartPole-v1'. Received: env={env!r}"
                ) from error
        elif isinstance(env, tuple) and len(env) == 2:
            env, made_params = env
            self.name = None
        else:
            made_params = None
            self.name = None
        if not all(callable(getattr(env, name, None)) for name in
                   ("reset", "step", "action_space", "observation_space")):
            raise ValueError(
                "Received an invalid value for `env`, expected a gymnax environment name, "
                "the `(env, env_params)` pair of `gymnax.make(name)`, or an environment "
                "with gymnax's `reset(key, params)`, `step(key, state, action, params)`, "
                f"`action_space(params)` and `observation_space(params)`. Received: env={env!r}"
            )
        if env_params is None:
            env_params = made_params if made_params is not None else env.default_params
        self.env, self.env_params = env, env_params
        if self.name is None:
            self.name = getattr(env, "name", type(env).__name__)
        self.observation_space = _gymnasium_space(env.observation_space(env_params),
                                                  "observation")
        self.action_space = _gymnasium_space(env.action_space(env_params), "action")
        if not hasattr(self.observation_space, "low"):
            raise ValueError(
                "Only Box observation spaces are supported. Received: "
                f"observation_space={self.observation_space}"
            )
        own_limit = getattr(env_params, "max_steps_in_episode", None)
        if max_episode_steps is None and own_limit is None:
            raise ValueError(
                "Received no `max_episode_steps` for an environment without its own limit "
                "(`env_params.max_steps_in_episode`): give the step cap of an episode. "
                "Received: max_episode_steps=None"
            )
        self.max_episode_steps = max_episode_steps
        self.episode_cap = int(max_episode_steps or own_limit)
        self.action_transform = self._resolve_transform(action_transform)
        #: Running observation statistics (None without normalisation).
        self.normalizer = (RunningNormalizer(self.observation_space.shape)
                           if normalize_observations else None)

    # Spaces, sizes and the action transform: exactly those of `Environment`.
    _resolve_transform = Environment._resolve_transform
    input_shape = Environment.input_shape
    num_outputs = Environment.num_outputs
    export_input = Environment.export_input
    export_output = Environment.export_output
    episode_seeds = Environment.episode_seeds
    # The normaliser: its statistics are updated from a sample after each generation
    # (`observe`) and saved with the run's checkpoint (`get_state`).
    observe = Environment.observe
    get_state = Environment.get_state
    set_state = Environment.set_state

    def normalization(self):
        """This generation's normalisation as float32 arrays for the compiled call:
        `(on, mean, std, clip)`; `on` is 0 while there are no statistics (the
        observations pass unchanged, as `RunningNormalizer` does)."""
        shape = self.observation_space.shape
        norm = self.normalizer
        if norm is None or not norm.count:
            return (np.float32(0.0), np.zeros(shape, np.float32), np.ones(shape, np.float32),
                    np.float32(1.0))
        return (np.float32(1.0), norm.mean.astype(np.float32),
                np.sqrt(norm.var + norm.epsilon).astype(np.float32), np.float32(norm.clip))

    def fingerprint(self):
        """The environment (name, class, parameters) and every setting, so a resume
        with other settings is refused."""
        return {"class": type(self).__name__, "settings": {
            "env": self.name, "env_class": type(self.env).__qualname__,
            "env_params": str(self.env_params), "episodes": self.episodes,
            "max_episode_steps": self.max_episode_steps, "episode_cap": self.episode_cap,
            "action_transform": self.action_transform,
            "normalize_observations": self.normalizer is not None,
            "observation_space": str(self.observation_space),
            "action_space": str(self.action_space)}}

    def __repr__(self):
        return (f"JaxEnvironment({self.name!r}, episodes={self.episodes}, "
                f"action_transform={self.action_transform!r})")


"""`Control`: evolve policies on continuous-control gymnasium environments (MuJoCo, ...)."""

from keras_lrne.tasks.environment import Environment, check_env_id, require_gymnasium

CONTROL_TRANSFORMS = ("tanh", "clip", "identity")


class Control(Environment):
    """Evolve a policy on a continuous-control environment with vector observations.

    For gymnasium environments whose observations are a vector (`Box` of rank 1) and
    whose actions are a `Box`: the MuJoCo v5 suite (`"HalfCheetah-v5"`, `"Hopper-v5"`,
    `"Walker2d-v5"`, `"Ant-v5"`, `"Humanoid-v5"`, ...), `"Pendulum-v1"`,
    `"MountainCarContinuous-v0"`. Observations are normalised with running statistics
    (frozen within a generation, updated after it), and the model's outputs are squashed
    into the action box with `tanh` by default: every output maps to a valid action,
    smoothly, whatever the scale of the evolved weights (`"clip"` would make every
    output beyond the bounds the same action).

    For pixel observations use `Atari` / `CarRacing` (or `Environment`); for `Discrete`
    actions use `Environment`.

    Args:
        env_id: a registered gymnasium id.
        episodes: episodes per member per generation (their mean return is the fitness).
        max_episode_steps: step cap per episode (None: the environment's own limit,
            1,000 for MuJoCo).
        normalize_observations: running mean/std observation normalisation (clipped to
            +-10).
        action_transform: `"tanh"` (squash and rescale to the bounds), `"clip"` (to the
            bounds) or `"identity"`.
        num_envs: environments stepped together (a chunk of member-episodes); default
            `min(population * episodes, 64)`.
        env_kwargs: keyword arguments for `gymnasium.make` (e.g.
            `{"terminate_when_unhealthy": False}`).
        reevaluate_top: two-stage selection (see `Environment`). None disables it.
        reevaluate_episodes: episodes of the second stage.

    Returns:
        A task for `model.evolve(task, ...)`: inputs of the observation's shape (float32),
        one output per action dimension.

    Example:

    >>> task = keras_lrne.tasks.Control("HalfCheetah-v5")
    >>> model = keras_lrne.Sequential([
    ...     keras.Input(task.input_shape),
    ...     keras_lrne.layers.FactorizedDense(64, rank=4, activation="tanh"),
    ...     keras_lrne.layers.FactorizedDense(64, rank=4, activation="tanh"),
    ...     keras.layers.Dense(task.num_outputs),
    ... ])
    >>> model.compile(loss="mse")  # unused by environment tasks, required by Keras style
    >>> history = model.evolve(task, strategy=keras_lrne.strategies.GA(64, 8),
    ...                        generations=100)
    """

    def __init__(self, env_id, *, episodes=1, max_episode_steps=None, normalize_observations=True,
                 action_transform="tanh", num_envs=None, env_kwargs=None, reevaluate_top=None,
                 reevaluate_episodes=None):
        require_gymnasium()
        if not isinstance(env_id, str):
            raise ValueError(
                "Received an invalid value for `env_id`, expected a gymnasium id such as "
                f"'HalfCheetah-v5'. Received: env_id={env_id!r}"
            )
        check_env_id(env_id, "env_id")
        if action_transform not in CONTROL_TRANSFORMS:
            raise ValueError(
                "Received an invalid value for `action_transform`, expected one of "
                f"{CONTROL_TRANSFORMS}. Received: action_transform={action_transform!r}"
            )
        if not isinstance(normalize_observations, bool):
            raise ValueError(
                "Received an invalid value for `normalize_observations`, expected a bool. "
                f"Received: normalize_observations={normalize_observations!r}"
            )
        super().__init__(env_id, episodes=episodes, max_episode_steps=max_episode_steps,
                         action_transform=action_transform,
                         normalize_observations=normalize_observations, num_envs=num_envs,
                         env_kwargs=env_kwargs, reevaluate_top=reevaluate_top,
                         reevaluate_episodes=reevaluate_episodes)

    def _check_spaces(self):
        spaces = require_gymnasium().spaces
        obs, action = self.observation_space, self.action_space
        if not isinstance(obs, spaces.Box) or len(obs.shape) != 1:
            raise ValueError(
                f"`Control` needs vector observations (a rank-1 Box); `env_id`={self.env!r} "
                f"observes {obs}. Use `keras_lrne.tasks.Environment` (or `Atari`, "
                f"`CarRacing`) for image observations. Received: env_id={self.env!r}"
            )
        if not isinstance(action, spaces.Box):
            raise ValueError(
                f"`Control` needs continuous actions (a Box action space); `env_id`="
                f"{self.env!r} has {action}. Use `keras_lrne.tasks.Environment` for Discrete "
                f"actions. Received: env_id={self.env!r}"
            )
        super()._check_spaces()

    def __repr__(self):
        return (f"Control({self.env!r}, episodes={self.episodes}, "
                f"action_transform={self.action_transform!r})")

"""`CarRacing`: evolve pixel policies on gymnasium's CarRacing-v3 (continuous)."""

import numpy as np

from keras_lrne._optional import require
from keras_lrne.tasks.environment import Environment, require_gymnasium

_FRAME_STACK = 4
_SIZE = 64
#: Early termination: this many consecutive negative step rewards end an episode.
NEGATIVE_STREAK = 21


def _require_box2d():
    require("Box2D", "CarRacing tasks", "rl", packages="Box2D and pygame")


def area_resize_96_to_64(frames):
    """Area-averaging resize of `(..., 96, 96, C)` frames to `(..., 64, 64, C)` float32.

    96 -> 64 is a 3:2 ratio: every 3 input pixels become 2 output pixels, weighted
    `(1, 0.5) / 1.5` and `(0.5, 1) / 1.5` (the same as OpenCV's `INTER_AREA`), per axis.
    """
    x = np.asarray(frames, np.float32)
    *lead, height, width, channels = x.shape
    if (height, width) != (96, 96):
        raise ValueError(f"Expected 96x96 frames. Received: shape={x.shape}")
    x = x.reshape(*lead, 32, 3, width, channels)
    x = np.stack([x[..., 0, :, :] * 2 + x[..., 1, :, :], x[..., 1, :, :] + x[..., 2, :, :] * 2],
                 axis=-3).reshape(*lead, 64, width, channels)
    x = x.reshape(*lead, 64, 32, 3, channels)
    x = np.stack([x[..., 0, :] * 2 + x[..., 1, :], x[..., 1, :] + x[..., 2, :] * 2],
                 axis=-2).reshape(*lead, 64, 64, channels)
    return x * np.float32(1.0 / 9.0)


class CarRacing(Environment):
    """Evolve a pixel policy on gymnasium's `CarRacing-v3` (loss = -episode return).

    The paper's CarRacing setting: continuous actions (steering, gas, brake) taken
    directly from the model's 3 outputs, RGB frames resized from 96x96 to 64x64 (area
    averaging) and the last 4 stacked into 64x64x12 inputs scaled to [0, 1], a
    1,000-step cap, 2 episodes per member, and early termination: an episode ends once
    more than 20 rewards were recorded and the last 21 are all negative (no new track
    tile for 21 frames). The paper's two-stage selection (all members play 2 episodes,
    the best 32 play 4 more, the best 8 become parents) is `reevaluate_top=32,
    reevaluate_episodes=4` with `GA(256, 8)`.

    gymnasium does not check CarRacing's action bounds: gas is clipped to [0, 1] by the
    car model, a brake <= 0 means no braking, and a steering target beyond [-1, 1] only
    turns the wheels faster towards their joint limit. `action_transform="clip"` clips
    the outputs to the action box first.

    Reference: Garbus & Pollack, "Low Rank Factorizations are Indirect Encodings for Deep
    Neuroevolution", 2025.

    Args:
        episodes: episodes per member per generation (their mean return is the fitness).
        max_episode_steps: step cap per episode.
        early_termination: end an episode after 21 consecutive negative rewards (once
            more than 20 rewards were recorded).
        action_transform: `"identity"` (the paper), `"clip"` (to the action box) or
            `"tanh"` (squashed into the box).
        num_envs: environments stepped together (a chunk of member-episodes); default
            `min(population * episodes, 64)`.
        reevaluate_top: two-stage selection (see `Environment`); the paper: 32. None
            (default) disables it.
        reevaluate_episodes: episodes of the second stage; the paper: 4.

    Returns:
        A task for `model.evolve(task, ...)`: inputs `(64, 64, 12)` float32 in [0, 1]
        (channels frame-major: `[f0 R, f0 G, f0 B, f1 R, ...]`, oldest frame first),
        3 outputs (steering, gas, brake).

    Example:

    >>> task = keras_lrne.tasks.CarRacing(episodes=2, reevaluate_top=32,
    ...                                   reevaluate_episodes=4)
    >>> model = keras_lrne.Sequential([
    ...     keras.Input(task.input_shape),
    ...     keras.layers.Conv2D(32, 4, strides=2, activation="relu"),
    ...     keras.layers.Conv2D(64, 4, strides=2, activation="relu"),
    ...     keras.layers.Conv2D(128, 4, strides=2, activation="relu"),
    ...     keras.layers.Conv2D(256, 4, strides=2, activation="relu"),
    ...     keras.layers.Flatten(),
    ...     keras_lrne.layers.FactorizedDense(256, rank=1, activation="relu"),
    ...     keras.layers.Dense(task.num_outputs),
    ... ])
    >>> model.compile(loss="mse")  # unused by environment tasks, required by Keras style
    >>> strategy = keras_lrne.strategies.GA(256, 8)
    >>> history = model.evolve(task, strategy=strategy, generations=40)
    """

    def __init__(self, *, episodes=2, max_episode_steps=1000, early_termination=True,
                 action_transform="identity", num_envs=None, reevaluate_top=None,
                 reevaluate_episodes=None):
        require_gymnasium()
        _require_box2d()
        if not isinstance(early_termination, bool):
            raise ValueError(
                "Received an invalid value for `early_termination`, expected a bool. "
                f"Received: early_termination={early_termination!r}"
            )
        if action_transform not in ("identity", "clip", "tanh"):
            raise ValueError(
                "Received an invalid value for `action_transform`, expected one of "
                f"('identity', 'clip', 'tanh'). Received: action_transform={action_transform!r}"
            )
        if max_episode_steps is None:
            raise ValueError(
                "Received an invalid value for `max_episode_steps`, expected a positive "
                "integer. Received: max_episode_steps=None"
            )
        self.early_termination = early_termination
        super().__init__("CarRacing-v3", episodes=episodes, max_episode_steps=max_episode_steps,
                         action_transform=action_transform, normalize_observations=False,
                         num_envs=num_envs, env_kwargs={"continuous": True},
                         reevaluate_top=reevaluate_top, reevaluate_episodes=reevaluate_episodes)

    def make_env(self):
        """One `CarRacing-v3` with a step cap and a 4-frame stack: `(4, 96, 96, 3)` uint8."""
        gymnasium = require_gymnasium()
        env = super().make_env()
        return gymnasium.wrappers.FrameStackObservation(env, _FRAME_STACK)

    @property
    def input_shape(self):
        """`(64, 64, 12)`: 4 stacked RGB frames, frame-major channels."""
        return (_SIZE, _SIZE, 3 * _FRAME_STACK)

    def preprocess(self, obs):
        """`(N, 4, 96, 96, 3)` uint8 frames -> `(N, 64, 64, 12)` float32 in [0, 1]."""
        x = area_resize_96_to_64(obs) * np.float32(1.0 / 255.0)
        n, stack, height, width, channels = x.shape
        return np.ascontiguousarray(
            x.transpose(0, 2, 3, 1, 4).reshape(n, height, width, stack * channels)
        )

    def export_input(self, obs):
        """`preprocess` in keras.ops (exported policies): the exact 96 -> 64 area average
        is a x2 nearest upsampling followed by 3x3 average pooling."""
        from keras import ops

        x = ops.cast(obs, "float32") * (1.0 / 255.0)  # (N, 4, 96, 96, 3)
        x = ops.reshape(ops.transpose(x, (0, 2, 3, 1, 4)), (-1, 96, 96, 12))
        x = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)
        return ops.average_pool(x, 3, strides=3, padding="valid")

    def should_stop(self, rewards):
        """True once more than 20 rewards were recorded and the last 21 are all negative."""
        if not self.early_termination or len(rewards) < NEGATIVE_STREAK:
            return False
        return all(r < 0 for r in rewards[-NEGATIVE_STREAK:])

    def __repr__(self):
        return (f"CarRacing(episodes={self.episodes}, max_episode_steps={self.max_episode_steps}, "
                f"early_termination={self.early_termination})")

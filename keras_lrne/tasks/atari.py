"""`Atari`: evolve pixel policies on Atari 2600 games (ale-py emulators)."""

import difflib

import numpy as np
from keras import ops

from keras_lrne._validation import check_int
from keras_lrne.tasks._ale_vector import AleVectorEnv, _require_ale
from keras_lrne.tasks.environment import Environment, require_gymnasium

VERSIONS = ("v4", "v5")
_FRAME_STACK = 4
_SIZE = 84


def _game_names():
    """Maps accepted spellings (`"SpaceInvaders"`, `"space_invaders"`) to ROM ids."""
    ale_py, _ = _require_ale()
    from ale_py.registration import rom_id_to_name

    names = {}
    for rom in ale_py.roms.get_all_rom_ids():
        names[rom] = rom
        names[rom_id_to_name(rom)] = rom
    return names


def resolve_game(game):
    """Returns the ale-py ROM id of `game` or raises a ValueError with close matches."""
    if not isinstance(game, str):
        raise ValueError(
            "Received an invalid value for `game`, expected an Atari game name such as "
            f"'Frostbite' or 'SpaceInvaders'. Received: game={game!r}"
        )
    names = _game_names()
    if game in names:
        return names[game]
    folded = {name.lower().replace("_", ""): rom for name, rom in names.items()}
    key = game.lower().replace("_", "").replace(" ", "")
    if key in folded:
        return folded[key]
    from ale_py.registration import rom_id_to_name

    candidates = {rom_id_to_name(rom).lower(): rom_id_to_name(rom) for rom in set(names.values())}
    matches = difflib.get_close_matches(key, list(candidates), n=5, cutoff=0.6)
    hint = (
        f" Did you mean: {', '.join(repr(candidates[m]) for m in matches)}?" if matches else ""
    )
    raise ValueError(
        f"Received an unknown Atari game for `game`.{hint} ale-py ships "
        f"{len(candidates)} ROMs (see `ale_py.roms.get_all_rom_ids()`). Received: game={game!r}"
    )


class Atari(Environment):
    """Evolve a policy on an Atari 2600 game from RGB pixels (loss = -episode return).

    The paper's Atari setting: `*Deterministic-v4` dynamics (frameskip 4, no sticky
    actions, minimal action set), RGB frames resized to 84x84, the last 4 frames stacked
    into 84x84x12 inputs scaled to [0, 1], 0 to `noop_max - 1` random no-op steps at the
    start of each episode (the paper's 0-29), greedy (argmax) actions, a 2,500-step cap,
    one episode per member, no episodic life and no reward clipping. Environments are
    ale-py emulators (one `ALEInterface` per sub-environment) with the observations,
    rewards and episode ends of ale-py's native `AtariVectorEnv`; all members of a
    generation share the episode seeds, hence the no-op starts. A seeded reset restores
    the emulator state of a seeded ROM load (cloned once) rather than reloading the ROM.

    Differences from the authors' gymnasium loop, all minor: no-op starts happen inside
    the environment and do not count towards `max_episode_steps`; frames are resized by
    ale-py (not OpenCV); observations are the last frame of each 4-frame skip (no max-pool
    over the last two frames, as in `Deterministic-v4`); and every sub-environment of the
    native vector advances on every step (finished episodes receive no-ops and are not
    counted), so early-finishing members save less time than with `Environment`.
    With ale-py 0.12, whose saved states leave out the TIA's partial-frame flag (fixed
    upstream later), a restored reset could differ from a ROM load in a game whose
    frames end mid-frame; the paper's games and Pong, Space Invaders were checked equal.

    Reference: Garbus & Pollack, "Low Rank Factorizations are Indirect Encodings for Deep
    Neuroevolution", 2025 (Asteroids, Frostbite, Gravitar, Kangaroo).

    Args:
        game: the game, CamelCase as in gymnasium ids (`"Frostbite"`, `"SpaceInvaders"`)
            or an ale-py ROM id (`"space_invaders"`).
        episodes: episodes per member per generation (their mean return is the fitness).
        max_episode_steps: step cap per episode (agent steps, 4 frames each).
        noop_max: each episode starts with a random number of no-op steps, 0 to
            `noop_max - 1`, drawn from the episode's seed (0: none). Every episode is a
            function of its seed alone: each reset is seeded.
        version: `"v4"` (the paper: `*Deterministic-v4` semantics) or `"v5"` (ale-py's
            `ALE/*-v5` settings: sticky actions with probability 0.25 and a
            108,000-frame limit).
        full_action_space: use all 18 Atari actions instead of the game's minimal set
            (both `v4` and ale-py's `v5` ids default to the minimal set).
        num_envs: environments stepped together (a chunk of member-episodes); default
            `min(population * episodes, 64)`.
        num_threads: unused (kept for compatibility: the emulators step in the calling
            thread).
        reevaluate_top: two-stage selection (see `Environment`). None disables it.
        reevaluate_episodes: episodes of the second stage.

    Returns:
        A task for `model.evolve(task, ...)`: inputs `(84, 84, 12)` float32 in [0, 1]
        (channels frame-major: `[f0 R, f0 G, f0 B, f1 R, ...]`, oldest frame first),
        `num_outputs` actions.

    Example:

    >>> task = keras_lrne.tasks.Atari("Frostbite")
    >>> model = keras_lrne.Sequential([
    ...     keras.Input(task.input_shape),
    ...     keras.layers.Conv2D(32, 8, strides=4, activation="relu"),
    ...     keras.layers.Conv2D(64, 4, strides=2, activation="relu"),
    ...     keras.layers.Conv2D(64, 3, strides=1, activation="relu"),
    ...     keras.layers.Flatten(),
    ...     keras_lrne.layers.FactorizedDense(256, rank=4, activation="relu"),
    ...     keras.layers.Dense(task.num_outputs),
    ... ])
    >>> model.compile(loss="mse")  # unused by environment tasks, required by Keras style
    >>> history = model.evolve(task, strategy=keras_lrne.strategies.GA(512, 16),
    ...                        generations=300)
    """

    #: The rollout engine runs two vector environments in lanes that overlap stepping
    #: (one lane's emulators) with the policy forward (the other lane's, in the
    #: backend's threads, outside the GIL).
    threaded_vector_env = True

    def __init__(self, game, *, episodes=1, max_episode_steps=2500, noop_max=30, version="v4",
                 full_action_space=False, num_envs=None, num_threads=None,
                 reevaluate_top=None, reevaluate_episodes=None):
        require_gymnasium()
        self._set_reevaluation(reevaluate_top, reevaluate_episodes)
        check_int("episodes", episodes)
        check_int("max_episode_steps", max_episode_steps)
        check_int("num_envs", num_envs, allow_none=True)
        check_int("num_threads", num_threads, allow_none=True)
        check_int("noop_max", noop_max, minimum=0)
        if version not in VERSIONS:
            raise ValueError(
                f"Received an invalid value for `version`, expected one of {VERSIONS}. "
                f"Received: version={version!r}"
            )
        if not isinstance(full_action_space, bool):
            raise ValueError(
                "Received an invalid value for `full_action_space`, expected a bool. "
                f"Received: full_action_space={full_action_space!r}"
            )
        self.game = resolve_game(game)
        self.env = game
        self.version = version
        self.noop_max = int(noop_max)
        self.full_action_space = full_action_space
        self.num_threads = num_threads
        self.episodes = int(episodes)
        self.max_episode_steps = int(max_episode_steps)
        self.episode_cap = self.max_episode_steps
        self.num_envs = num_envs
        self.env_kwargs = {}
        self.normalizer = None
        self.action_transform = "argmax"
        probe = self.make_vector_env(1)
        self.observation_space = probe.single_observation_space
        self.action_space = probe.single_action_space
        probe.close()

    def vector_env_kwargs(self):
        """The keyword arguments of `ale_py.vector_env.AtariVectorEnv` for this task."""
        return {
            "grayscale": False,
            "stack_num": _FRAME_STACK,
            "img_height": _SIZE,
            "img_width": _SIZE,
            "frameskip": 4,
            "maxpool": False,
            "repeat_action_probability": 0.25 if self.version == "v5" else 0.0,
            "full_action_space": self.full_action_space,
            "noop_max": self.noop_max,
            "episodic_life": False,
            "reward_clipping": False,
            "use_fire_reset": False,
            "max_num_frames_per_episode": 108_000,
            "num_threads": self.num_threads or 0,
        }

    def make_env(self):
        raise NotImplementedError(
            "Atari tasks step a vector of ale-py emulators: use "
            "`task.make_vector_env(num_envs)`."
        )

    def make_vector_env(self, num_envs):
        """Creates the vector of emulators (behind the rollout engine's protocol)."""
        return AleVectorEnv(self.game, num_envs, **self.vector_env_kwargs())

    @property
    def input_shape(self):
        """`(84, 84, 12)`: 4 stacked RGB frames, frame-major channels."""
        return (_SIZE, _SIZE, 3 * _FRAME_STACK)

    def export_input(self, obs):
        """`(N, 4, 84, 84, 3)` uint8 frames -> `(N, 84, 84, 12)` float32 in [0, 1].

        The one frame transform, in keras.ops: inside the compiled policy call
        (`device_input`), in exported policies, and on the host (`preprocess`).
        """
        x = ops.transpose(ops.cast(obs, "float32") * (1.0 / 255.0), (0, 2, 3, 1, 4))
        return ops.reshape(x, (-1, *x.shape[1:3], x.shape[3] * x.shape[4]))

    def preprocess(self, obs):
        """`export_input` on the host, as a numpy array."""
        return np.asarray(ops.convert_to_numpy(self.export_input(np.asarray(obs))))

    def host_input(self, obs):
        """The raw uint8 frames: conversion happens on the device (`device_input`)."""
        return np.asarray(obs)

    def device_input(self, x):
        """One member's `(4, 84, 84, 3)` uint8 frames -> `(84, 84, 12)`, inside the
        compiled policy call (4x less data moved, no host pass over it)."""
        return self.export_input(x[None])[0]

    def __repr__(self):
        return (f"Atari({self.env!r}, episodes={self.episodes}, "
                f"max_episode_steps={self.max_episode_steps}, version={self.version!r})")

"""Atari sub-environments (one `ale_py.ALEInterface` each) behind the rollout engine's
vector protocol, with seeded resets that restore an emulator state instead of reloading
the ROM."""

import struct

import numpy as np

from keras_lrne._optional import require


def _require_ale():
    packages = "ale-py (>= 0.10, with its native vector environment)"
    ale_py = require("ale_py", "Atari tasks", "rl", packages)
    vector_env = require("ale_py.vector_env", "Atari tasks", "rl", packages)
    return ale_py, vector_env.AtariVectorEnv


def _area_taps(src, dst):
    """OpenCV's `INTER_AREA` taps for a downscale from `src` to `dst` pixels (what ale-py's
    native vector environment resizes frames with): `(index, weight)` arrays of shape
    `(taps, dst)`, float32 weights, unused taps with weight 0 (adding 0.0 is exact)."""
    scale = src / dst
    per = []
    for d in range(dst):
        lo = d * scale
        hi = lo + scale
        cell = min(scale, src - lo)
        first = min(int(np.ceil(lo)), src - 1)
        last = min(int(np.floor(hi)), src - 1)
        first = min(first, last)
        taps = []
        if first - lo > 1e-3:
            taps.append((first - 1, (first - lo) / cell))
        taps += [(s, 1.0 / cell) for s in range(first, last)]
        if hi - last > 1e-3:
            taps.append((last, min(min(hi - last, 1.0), cell) / cell))
        per.append(taps)
    width = max(len(taps) for taps in per)
    index = np.zeros((width, dst), np.int64)
    weight = np.zeros((width, dst), np.float32)
    for d, taps in enumerate(per):
        for j, (s, w) in enumerate(taps):
            index[j, d], weight[j, d] = s, np.float32(w)
    return index, weight


class _AreaResize:
    """Bit-exact numpy copy of OpenCV's `cv::resize(..., INTER_AREA)` downscale of uint8
    frames (float32 sums in OpenCV's order: each source row across, then rows down;
    rounded half to even). Integer scales and upscaling are not covered (ale-py's 84x84
    from 210x160 is neither)."""

    def __init__(self, src_hw, dst_hw, channels):
        self.channels = channels
        yi, self.yw = _area_taps(src_hw[0], dst_hw[0])
        xi, xw = _area_taps(src_hw[1], dst_hw[1])
        self.yi = yi
        # Columns of a (H, W * C) row: tap j of output column (x, c) reads (xi * C + c).
        self.xi = (xi[:, :, None] * channels + np.arange(channels)).reshape(len(xi), -1)
        self.xw = np.repeat(xw, channels, axis=1)
        self.dst_hw = dst_hw

    def __call__(self, frames):
        """`(N, H, W[, C])` uint8 -> `(N, h, w[, C])` uint8."""
        n = frames.shape[0]
        rows = frames.reshape(n, frames.shape[1], -1).astype(np.float32)
        across = rows[:, :, self.xi[0]] * self.xw[0]
        for j in range(1, len(self.xi)):
            across += rows[:, :, self.xi[j]] * self.xw[j]
        down = across[:, self.yi[0], :] * self.yw[0][:, None]
        for j in range(1, len(self.yi)):
            down += across[:, self.yi[j], :] * self.yw[j][:, None]
        out = np.rint(down).clip(0, 255).astype(np.uint8)
        return out.reshape((n, *self.dst_hw) + ((self.channels,) if self.channels > 1 else ()))


def _mt19937_text(seed):
    """`std::mt19937(seed)`'s state as libstdc++ writes it (ALE serialises its RNG so)."""
    key = np.random.RandomState(int(seed)).get_state()[1]
    return (" ".join(str(int(word)) for word in key) + " 624").encode()


def _mt19937_draws(seed, count):
    """The first `count` 32-bit outputs of `std::mt19937(seed)`."""
    generator = np.random.MT19937()
    generator.state = {"bit_generator": "MT19937", "state": {
        "key": np.random.RandomState(int(seed)).get_state()[1], "pos": 624}}
    return generator.random_raw(count)


class _SeededStates:
    """The emulator state right after a seeded reset (`random_seed` = seed, ROM load,
    `reset_game`), for any seed, from one such state.

    The ROM load rebuilds the console, whose own generator (the one that randomises RAM
    at power-on) always starts from ALE's fixed `system_random_seed`; the episode seed
    only seeds ALE's environment generator (sticky actions), which `reset_game` does not
    draw from. So the states of two seeds differ only in that generator's serialised
    mt19937 text, which this substitutes (tests check the bytes against real ROM loads).
    """

    def __init__(self, ale_py, state):
        self._ale_py = ale_py
        data = state.serialize()
        # ALEState.serialize(): 6 int32, the emulator string (int32 length + bytes), 2 int32;
        # the emulator string ends with the RNG's text (int32 length + bytes).
        (length,) = struct.unpack_from("<i", data, 24)
        self._head, self._tail = data[:24], data[28 + length:]
        inner = data[28:28 + length]
        # ... then a bool (ALE's `true` pattern) saying the RNG follows, and its text.
        marker = inner.rindex(b"\xb2\xfa\xb1\xfa")
        (rng_length,) = struct.unpack_from("<i", inner, marker + 4)
        if marker + 8 + rng_length != len(inner) or not inner.endswith(b" 624"):
            raise RuntimeError(
                "ale-py's state layout is not the one keras-lrne's Atari resets rely on "
                "(ale-py 0.10-0.12): no seeded RNG text at the end of the emulator state."
            )
        self._inner_head = inner[:marker + 4]

    def serialized(self, seed):
        text = _mt19937_text(seed)
        inner = self._inner_head + struct.pack("<i", len(text)) + text
        return self._head + struct.pack("<i", len(inner)) + inner + self._tail

    def __call__(self, seed):
        return self._ale_py.ALEState(self.serialized(seed))


class AleVectorEnv:
    """Atari sub-environments behind the `reset(seeds, count)` / `step(actions, active)`
    protocol of `keras_lrne.rollout`, with the observations, rewards and episode ends of
    ale-py's native `AtariVectorEnv` (same frame skip, frame stack and `INTER_AREA`
    resize, same episode ends), but cheap seeded resets.

    Every episode is a function of its seed alone: a reset with seed `s` puts the
    emulator in exactly the state that ale-py's seeded reset (`random_seed = s`, a ROM
    load, `reset_game`) produces, but by restoring a state cloned once after such a load
    (`restoreState`, well under a millisecond) instead of reloading the ROM (about 100 ms,
    most of it ALE rebuilding its colour-averaging tables). The state's environment
    generator (sticky actions) is set to the seed's, and the sticky "previous action" is
    the no-op, as after a ROM load. Unseeded resets would carry emulator state from one
    episode to the next (ALE's power-on RAM randomisation draws from a generator that a
    reset does not reseed): measured, the same population gave other returns with 1, 3 or
    12 sub-environments. The random no-op start, 0 to `noop_max - 1` steps (the paper's
    0-29 for 30), is drawn from the same seed and played by `step`; the no-op steps count
    toward the episode's step cap and their rewards are not part of the return.

    Each sub-environment loads the ROM once, when the vector is built. Stepping runs in
    the calling thread (ALE holds the GIL).

    Args:
        game: ale-py ROM id (`"frostbite"`).
        num_envs: sub-environments.
        **kwargs: keyword arguments of `AtariVectorEnv` (`episodic_life` and
            `use_fire_reset` must be False; `num_threads` is ignored).
    """

    def __init__(self, game, num_envs, *, grayscale=False, stack_num=4, img_height=84,
                 img_width=84, frameskip=4, maxpool=False, repeat_action_probability=0.0,
                 full_action_space=False, noop_max=0, episodic_life=False,
                 reward_clipping=False, use_fire_reset=False,
                 max_num_frames_per_episode=108_000, num_threads=0):
        ale_py, _ = _require_ale()
        from gymnasium.spaces import Box, Discrete

        if episodic_life or use_fire_reset:
            raise ValueError(
                "Received an invalid value for `episodic_life`/`use_fire_reset`, expected "
                "False (keras-lrne's Atari episodes end at game over). Received: "
                f"episodic_life={episodic_life!r}, use_fire_reset={use_fire_reset!r}"
            )
        del num_threads
        self.noop_max = int(noop_max)
        self.num_envs = int(num_envs)
        self.frameskip = int(frameskip)
        self.maxpool = bool(maxpool)
        self.grayscale = bool(grayscale)
        self.stack_num = int(stack_num)
        self.reward_clipping = bool(reward_clipping)
        self.max_frames = int(max_num_frames_per_episode)
        self.sticky = float(repeat_action_probability)
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        rom = ale_py.roms.get_rom_path(game)
        self._ales = []
        for _ in range(self.num_envs):
            ale = ale_py.ALEInterface()
            ale.setFloat("repeat_action_probability", self.sticky)
            ale.setInt("random_seed", 0)
            ale.loadROM(rom)
            self._ales.append(ale)
        first = self._ales[0]
        first.reset_game()
        self.rom_loads = self.num_envs  # ROM loads so far (only at construction)
        self._states = _SeededStates(ale_py, first.cloneState(include_rng=True))
        self._actions = (first.getLegalActionSet() if full_action_space
                         else first.getMinimalActionSet())
        self._noop = ale_py.Action.NOOP
        height, width = first.getScreenDims()
        channels = 1 if self.grayscale else 3
        self._raw_shape = (height, width) if self.grayscale else (height, width, 3)
        self._resize = (None if (height, width) == (img_height, img_width)
                        else _AreaResize((height, width), (img_height, img_width), channels))
        # The reset frame of every seed (the emulator's screen is not part of its state).
        self._reset_raw = self._screen(first)
        self._reset_frame = self._process(self._reset_raw[None])[0]
        frame_shape = (img_height, img_width) + (() if self.grayscale else (3,))
        self.single_observation_space = Box(0, 255, (self.stack_num, *frame_shape), np.uint8)
        self.single_action_space = Discrete(len(self._actions))
        self._stack = np.zeros((self.num_envs, self.stack_num, *frame_shape), np.uint8)
        self._last = np.zeros((self.num_envs, 2, *self._raw_shape), np.uint8)
        self._frames = np.zeros(self.num_envs, np.int64)
        self._over = np.zeros(self.num_envs, bool)
        self._noops = np.zeros(self.num_envs, np.int64)
        self._prime = None
        if self.sticky > 0:
            # A state whose generator keeps both players' actions on its next frame: one
            # no-op from it makes "the previous action" the no-op before a restore.
            seed = next(s for s in range(1000)
                        if np.all(_mt19937_draws(s, 2) / 2**32 >= self.sticky))
            self._prime = self._states(seed)

    def _screen(self, ale, out=None):
        if out is None:
            out = np.empty(self._raw_shape, np.uint8)
        if self.grayscale:
            ale.getScreenGrayscale(out)
        else:
            ale.getScreenRGB(out)
        return out

    def _process(self, raw):
        return raw if self._resize is None else self._resize(raw)

    def _restore(self, i, seed):
        ale = self._ales[i]
        if self._prime is not None:
            ale.restoreState(self._prime)
            ale.act(self._noop)
        ale.restoreState(self._states(seed))
        self._stack[i] = 0
        self._stack[i, -1] = self._reset_frame
        self._last[i, 0] = self._reset_raw
        self._last[i, 1] = 0
        self._frames[i] = 0
        self._over[i] = False

    def _plan_noops(self, indices, seeds):
        for i, seed in zip(indices, np.asarray(seeds).reshape(-1)):
            if self.noop_max:
                rng = np.random.default_rng([int(seed), 7])
                self._noops[i] = rng.integers(0, self.noop_max)
            else:
                self._noops[i] = 0

    @staticmethod
    def _check_seeds(seeds):
        seeds = np.asarray(seeds, np.int64).reshape(-1)
        if np.any((seeds < 0) | (seeds >= 2**31)):
            raise ValueError(
                "Received an invalid value for `seeds`, expected integers in [0, 2**31). "
                f"Received: seeds={seeds.tolist()}"
            )
        return seeds

    def reset(self, seeds, count):
        """Resets the first `count` sub-environments to the episodes of `seeds` (a seeded
        reset and its number of random no-ops); returns their observations. The others are
        idle for this chunk (they receive no-ops)."""
        seeds = self._check_seeds(seeds)[:count]
        if len(seeds) != count or count < 1 or count > self.num_envs:
            raise ValueError(
                f"Expected 1 <= count <= {self.num_envs} and one seed per reset environment. "
                f"Received: count={count}, len(seeds)={len(seeds)}"
            )
        for i, seed in enumerate(np.resize(seeds, self.num_envs)):
            self._restore(i, seed)
        self._noops[:] = 0
        self._plan_noops(range(count), seeds)
        return self._stack[:count].copy()

    def reset_at(self, indices, seeds):
        """Resets only the sub-environments at `indices` (one seed each); returns their
        observations, aligned with `indices`."""
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        seeds = self._check_seeds(seeds)
        for i, seed in zip(indices, seeds):
            self._restore(i, seed)
        self._plan_noops(indices, seeds)
        return self._stack[indices].copy()

    def _step_one(self, i, action):
        ale = self._ales[i]
        reward = 0
        last = self._last[i]
        for skip in range(self.frameskip, 0, -1):
            reward += ale.act(action)
            self._frames[i] += 1
            over = ale.game_over()
            if over or self._frames[i] >= self.max_frames:
                self._over[i] = over
                break
            # As ale-py: the last two frames of the skip are kept (the last one, or their
            # maximum with `maxpool`); a skip cut short by the episode's end keeps the
            # previous step's.
            if skip <= 2:
                self._screen(ale, last[skip - 1])
        if self.reward_clipping:
            reward = max(-1, min(1, reward))
        return reward

    def step(self, actions, active):
        """Steps all sub-environments: `actions` (aligned with `active`) for `active`,
        no-ops for the others and for sub-environments still playing their random no-op
        start. Returns `(obs, rewards, done, failed)` aligned with `active`."""
        active = np.asarray(active, np.int64).reshape(-1)
        full = np.zeros(self.num_envs, np.int64)
        full[active] = np.asarray(actions, np.int64).reshape(-1)
        starting = self._noops > 0
        full[starting] = 0
        self._noops[starting] -= 1
        rewards = np.zeros(self.num_envs, np.float64)
        for i in range(self.num_envs):
            rewards[i] = self._step_one(i, self._actions[full[i]])
        raw = self._last[:, 0]
        if self.maxpool:  # in place, as ale-py (a skip cut short keeps the maximum)
            np.maximum(raw, self._last[:, 1], out=raw)
        self._stack[:, :-1] = self._stack[:, 1:]
        self._stack[:, -1] = self._process(raw)
        done = self._over | (self._frames >= self.max_frames)
        # An episode that ended restarts unseeded in ale-py; here it waits for a reset.
        rewards[starting] = 0.0  # no-op starts are not part of the policy's return
        rewards = rewards[active]
        failed = ~np.isfinite(rewards)
        return self._stack[active].copy(), rewards, done[active], failed

    def close(self):
        self._ales = []

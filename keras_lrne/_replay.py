"""GIF helpers of `keras-lrne play --record`, also runnable as a standalone script.

As a script (`python _replay.py SPEC.json`) it replays recorded actions in a fresh
gymnasium environment and renders the frames, in a process without TensorFlow: MuJoCo's
off-screen (EGL) rendering crashes in a process that has loaded TensorFlow. It imports
only numpy, Pillow and gymnasium, never keras_lrne.
"""

import json
import os
import sys

import numpy as np


def to_frame(image, max_width=320):
    """An RGB frame as a small palette image (GIFs of long episodes stay small)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(image, np.uint8))
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)))
    return img.convert("P", palette=Image.Palette.ADAPTIVE)


def write_gif(frames, path, fps):
    """Writes palette frames as a looping GIF (frame times are multiples of 10 ms)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:],
                   duration=10 * max(1, round(100 / fps)), loop=0)


def replay(spec):
    """Replays `spec["actions"]` from `reset(seed=spec["seed"])`, one frame per step."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo: off-screen EGL
    import gymnasium

    try:  # ALE ids need ale-py's registration (gymnasium >= 1.0)
        import ale_py

        gymnasium.register_envs(ale_py)
    except ImportError:
        pass
    env = gymnasium.make(spec["env"], render_mode="rgb_array", **spec["env_kwargs"])
    env.reset(seed=spec["seed"])
    frames = []
    for action in np.load(spec["actions"]):
        frames.append(to_frame(env.render()))
        env.step(action.item() if action.ndim == 0 else action)
    env.close()
    write_gif(frames, spec["path"], spec["fps"])


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        replay(json.load(f))

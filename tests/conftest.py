"""Fixtures shared by the test modules, and the JAX compilation cache of the test run."""

import importlib.util
import os
import sys


def _use_a_jax_compilation_cache():
    """Points JAX's persistent compilation cache at the repository's ignored `.ci-cache/`.

    Set in the environment before Keras (and so JAX) is imported, so the pytest-xdist
    workers and every subprocess they start (kill-and-resume loops, fresh-process reload
    checks, examples) share it: a program compiled once, such as the same tiny model in
    another process, is loaded instead of compiled again. Programs that took at least
    one second to compile are cached (JAX's default): with every program cached, the
    cache held about 3,000 entries by the end of a CI run, and JAX's size-limited cache
    lists and reads the whole directory under its lock on every write. Variables the
    caller set win (an empty
    `JAX_COMPILATION_CACHE_DIR` turns the cache off); TensorFlow ignores them, and a
    missing or unwritable directory only costs the compilations.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, ".ci-cache", "jax"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    if importlib.util.find_spec("filelock") is not None:
        # A size limit makes JAX lock the cache while it reads or writes an entry, so
        # concurrent processes never read a half-written one (4 GiB: never reached).
        os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 2**30))
    if "jax" in sys.modules:  # imported already (by a plugin): JAX read its variables
        import jax

        for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                     "JAX_COMPILATION_CACHE_MAX_SIZE"):
            if name in os.environ:
                value = os.environ[name]
                jax.config.update(name.lower(), value if name.endswith("DIR") else
                                  type(jax.config.values[name.lower()])(value))


_use_a_jax_compilation_cache()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _helpers import forked  # noqa: E402

_LOAD_SCRIPT = """
import sys, numpy as np, keras, keras_lrne.layers
model = keras.saving.load_model(sys.argv[1])
ids = np.load(sys.argv[2])
expected = np.load(sys.argv[3])
out = keras.ops.convert_to_numpy(model(ids))
np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
names = [w.path for w in model.trainable_weights]
assert names == sys.argv[4].split(","), names
print("OK")
"""


def _load_check(model, ids, tmp_path):
    """Saves `model` as `.keras`, loads it in a fresh process and compares its outputs
    on `ids` and its weight paths."""
    path = str(tmp_path / "model.keras")
    model.save(path)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "out.npy", keras.ops.convert_to_numpy(model(ids)))
    names = ",".join(w.path for w in model.trainable_weights)
    # A fresh process, forked from one that imported Keras only (tests/_helpers/forked.py).
    result = forked.run(("-c", _LOAD_SCRIPT), [path, tmp_path / "ids.npy",
                                               tmp_path / "out.npy", names], timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "OK" in result.stdout


@pytest.fixture
def load_check():
    """`load_check(model, inputs, tmp_path)`: the model reloads in a fresh process."""
    return _load_check

"""Fixtures shared by the test modules."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

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
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND=keras.config.backend())
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, path, str(tmp_path / "ids.npy"),
         str(tmp_path / "out.npy"), names],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "OK" in result.stdout


@pytest.fixture
def load_check():
    """`load_check(model, inputs, tmp_path)`: the model reloads in a fresh process."""
    return _load_check

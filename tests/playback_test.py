import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from keras_lrne.export import POLICY_MARKER
from keras_lrne.playback import load_policy


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A minimal policy directory: a SavedModel with `serve` and the marker file."""
    directory = tmp_path_factory.mktemp("policy")
    module = tf.Module()
    module.w = tf.Variable(np.ones((3, 2), np.float32))
    module.serve = tf.function(lambda obs: tf.argmax(obs @ module.w, axis=-1),
                               input_signature=[tf.TensorSpec((None, 3), tf.float32)])
    tf.saved_model.save(module, str(directory))
    (directory / POLICY_MARKER).write_text(json.dumps(
        {"format": "keras_lrne_policy", "observation_dtype": "float32"}))
    return directory


def test_load_policy(policy_dir):
    serve, marker = load_policy(policy_dir)
    assert serve(np.zeros((2, 3))).shape == (2,)
    assert marker["format"] == "keras_lrne_policy"


@pytest.mark.parametrize(
    "name", ["saved_model.pb", "variables/variables.index",
             "variables/variables.data-00000-of-00001"],
)
def test_truncated_policy_files_are_reported_as_such(policy_dir, tmp_path, name):
    directory = tmp_path / "policy"
    shutil.copytree(policy_dir, directory)
    path = directory / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"could not be loaded: .*truncated or corrupt") as e:
        load_policy(directory)
    assert repr(str(directory)) in str(e.value)

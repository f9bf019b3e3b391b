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
        {"format": "keras_lrne_policy", "observation_shape": [3],
         "observation_dtype": "float32"}))
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


@pytest.mark.parametrize("drop", [["observation_dtype"],
                                  ["observation_dtype", "observation_shape"]])
def test_a_marker_with_missing_keys_is_named(policy_dir, tmp_path, capsys, drop):
    from keras_lrne import cli

    directory = tmp_path / "policy"
    shutil.copytree(policy_dir, directory)
    marker = {"format": "keras_lrne_policy", "env": "Pendulum-v1",
              "observation_shape": [3], "observation_dtype": "float32"}
    for key in drop:
        del marker[key]
    (directory / POLICY_MARKER).write_text(json.dumps(marker))
    path = repr(str(directory / POLICY_MARKER))
    message = f"lacks the key(s) {', '.join(map(repr, drop))}"
    with pytest.raises(ValueError, match=r"not a valid keras-lrne policy marker") as info:
        load_policy(directory)
    assert path in str(info.value) and message in str(info.value)
    for command in ("evaluate", "play"):  # an error, not a traceback
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, str(directory)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_the_policy_of_an_unfinished_run_is_not_played(policy_dir, tmp_path):
    # `--overwrite` killed after its first backup, in a directory whose old policy stayed.
    run = tmp_path / "run"
    shutil.copytree(policy_dir, run / "policy")
    (run / "backup").mkdir()
    for directory in (run, run / "policy"):
        with pytest.raises(ValueError, match=r"holds a keras-lrne run that has not finished"):
            load_policy(directory)
    (run / "summary.json").write_text("{}")  # the run finished: its summary is written last
    assert load_policy(run)[1]["format"] == "keras_lrne_policy"

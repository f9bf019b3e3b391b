"""`PopulationParallel`: results on 4 (simulated) devices equal the recorded one-device
runs, on the active backend; bad arguments are named."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from _helpers import reference_runs

import keras_lrne
from keras_lrne.distribution import PopulationParallel

HELPERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_helpers")


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """The results of `distribution_scenarios.py` (one subprocess for the module)."""
    out = str(tmp_path_factory.mktemp("devices") / "results.json")
    env = dict(os.environ, KERAS_BACKEND=keras.config.backend(), PYTHONPATH=os.pathsep.join(
        [HELPERS, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, os.path.join(HELPERS, "distribution_scenarios.py"),
                           out], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    with open(out) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def reference():
    with open(reference_runs.path()) as f:
        return json.load(f)


@pytest.mark.slow
def test_four_devices_are_used(four_devices):
    assert four_devices["devices"] == ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]
    assert four_devices["plan"] == {"members_per_device": 2, "num_devices": 4}
    # The GA holds its 2 survivors, not its 8 members: each device expands its own.
    assert four_devices["survivor_rows"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(reference_runs.SCENARIOS))
def test_runs_on_four_devices_match_the_one_device_reference(four_devices, reference, name):
    # "arrays" has 14 members (uneven over 4 devices), validation data and 4 progress
    # steps; "language_model" the LM task; "environment" CartPole with two-stage
    # selection (the rollout's per-step policy call is split over the devices).
    reference_runs.check(four_devices[name], reference[name])


@pytest.mark.slow
def test_a_run_resumes_on_another_device_count(four_devices, reference):
    reference_runs.check(four_devices["resumed"], reference["arrays"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["open_es", "open_es_low_rank"])
def test_open_es_does_not_depend_on_the_device_count(four_devices, name):
    one, four = four_devices[name]["one"], four_devices[name]["four"]
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5, atol=1e-6)
    for a, b in zip(four["weights"], one["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cma_es", "sep_cma_es", "snes", "pgpe"])
def test_native_strategies_do_not_depend_on_the_device_count(four_devices, name):
    # CMAES, SepCMAES, SNES and PGPE: 6 members over 4 devices (the last one padded),
    # the mean evaluated with them; the same losses and final mean as on one device.
    one, four = four_devices[name]["one"], four_devices[name]["four"]
    assert len(one["loss"]) == 2
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5, atol=1e-6)
    for a, b in zip(four["weights"], one["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_compiled_fitness_does_not_depend_on_the_device_count(four_devices):
    one, four = four_devices["fitness"]["one"], four_devices["fitness"]["four"]
    assert one["accuracy"] == four["accuracy"]
    np.testing.assert_allclose(four["reward"], one["reward"], rtol=1e-6)


@pytest.mark.slow
def test_the_cli_splits_the_population_with_devices(four_devices):
    summaries = four_devices["cli"]
    assert summaries["all"]["final_episode_return"] == summaries["1"]["final_episode_return"]
    assert summaries["all"]["env_steps"] == summaries["1"]["env_steps"] > 0


def test_the_cli_names_devices_it_does_not_have(tmp_path, capsys):
    from keras_lrne import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["control", "--env", "CartPole-v1", "--generations", "1", "--devices", "2",
                  "--output", str(tmp_path / "out"), "--verbose", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "devices=2" in err and "--devices 2" in err


def test_the_cli_takes_devices_or_workers_not_both(tmp_path, capsys):
    from keras_lrne import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["control", "--env", "CartPole-v1", "--generations", "1", "--devices", "all",
                  "--workers", "2", "--output", str(tmp_path / "out"), "--verbose", "0"])
    assert info.value.code == 2
    assert "--devices cannot be combined with --workers" in capsys.readouterr().err


@pytest.mark.parametrize("devices, message", [
    (0, "devices=0"),
    (2, "devices=2"),  # one CPU device here
    (True, "devices=True"),
    ("all", "devices='all'"),
    ([], r"devices=\[\]"),
    (["cpu:0", "cpu:0"], "listed twice"),
    (["tpu:7"], "element 0 is not a local device"),
    ([0], "element 0 is not a local device"),
])
def test_bad_devices_are_named(devices, message):
    with pytest.raises(ValueError, match=message):
        PopulationParallel(devices=devices)


def test_device_names_in_keras_and_tensorflow_spelling():
    assert PopulationParallel().devices == ["cpu:0"]
    assert PopulationParallel(devices=["/device:CPU:0"]).devices == ["cpu:0"]
    assert PopulationParallel(devices=1).get_config() == {"devices": ["cpu:0"]}


def test_evolve_rejects_a_distribution_that_is_not_one():
    model = keras_lrne.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    with pytest.raises(ValueError, match="distribution='mirrored'"):
        model.evolve(np.ones((4, 2)), np.ones((4, 1)), distribution="mirrored", verbose=0)

import json

import pytest

from keras_lrne import cli


@pytest.mark.parametrize(
    "argv",
    [
        ["atari", "--game", "Pong", "--max-episode-steps", "20", "--variant", "small"],
        ["control", "--env", "Pendulum-v1", "--max-episode-steps", "20"],
        ["carracing", "--max-episode-steps", "10", "--episodes", "1", "--reevaluate-top", "2",
         "--reevaluate-episodes", "1"],
    ],
)
def test_rl_commands_write_results(tmp_path, argv):
    out = tmp_path / argv[0]
    code = cli.main([*argv, "--population", "3", "--parents", "1", "--generations", "1",
                     "--verbose", "0", "--output", str(out)])
    assert code == 0
    for name in ("history.csv", "return.png", "model.keras", "lineage.npz"):
        assert (out / name).is_file(), name
    assert (out / "saved_model" / "saved_model.pb").is_file()
    assert (out / "policy" / "keras_lrne_policy.json").is_file()
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["command"] == argv[0] and summary["env_steps"] > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["atari", "--game", "Frostbyte"], "Frostbite"),
        (["control", "--env", "HalfCheetah-v9"], "HalfCheetah-v5"),
        (["control", "--env", "CartPole-v1"], "env_id"),
        (["atari", "--population", "2", "--parents", "2"], "--population"),
    ],
)
def test_rl_bad_input(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--generations", "1", "--verbose", "0", "--output", str(tmp_path)])
    assert info.value.code == 2
    assert message in capsys.readouterr().err

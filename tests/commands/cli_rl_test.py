import csv
import importlib.util
import json

import keras
import pytest

from keras_lrne import cli
from keras_lrne.commands import control


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
    # `keras-lrne play` runs the exported policy (from the run's output directory).
    gif = tmp_path / "episode.gif"
    code = cli.main(["play", str(out), "--episodes", "2", "--max-episode-steps", "6",
                     "--record", str(gif)])
    assert code == 0
    from PIL import Image

    with Image.open(gif) as image:  # one 30 ms frame per step of the first episode
        durations = []  # (Pillow merges identical consecutive frames, adding durations)
        for index in range(image.n_frames):
            image.seek(index)
            durations.append(image.info["duration"])
    assert sum(durations) == 6 * 30
    # `keras-lrne evaluate` plays the elite on held-out episodes and writes
    # evaluation.json; the same seed plays the same episodes.
    assert cli.main(["evaluate", str(out), "--episodes", "2", "--seed", "3"]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    assert result["mean_return"] == pytest.approx(sum(result["returns"]) / 2)
    from keras_lrne.playback import evaluate, training_seeds

    run_args = json.loads((out / "summary.json").read_text())["args"]
    assert not set(result["episode_seeds"]) & training_seeds(run_args)
    again = evaluate(out, episodes=2, seed=3, write=False)
    assert again["returns"] == result["returns"]
    assert again["episode_seeds"] == result["episode_seeds"]
    assert evaluate(out, episodes=2, seed=4, write=False)["episode_seeds"] != \
        result["episode_seeds"]


@pytest.mark.backend_independent
def test_evaluate_never_plays_the_policy_of_a_replaced_run(tmp_path, capsys, monkeypatch):
    from keras_lrne import checkpoint

    out = tmp_path / "ctl"
    argv = ["control", "--env", "Pendulum-v1", "--max-episode-steps", "10", "--population",
            "3", "--parents", "1", "--generations", "2", "--verbose", "0", "--output",
            str(out)]
    assert cli.main(argv) == 0
    # The run ends with what its returns say: not "elite return A -> B", which read as a
    # regression (each generation plays new episodes).
    last = capsys.readouterr().out.strip().splitlines()[-1]
    logs = list(csv.DictReader((out / "history.csv").open()))
    best = max(float(row["episode_return"]) for row in logs)
    assert f"best elite return {best:.1f}, last generation's mean return " \
        f"{float(logs[-1]['mean_return']):.1f} (training episodes) in 2 generations" in last
    assert "->" not in last
    assert not (out / ".keras-lrne.lock").exists()  # a finished run leaves no lock file
    # Run it again with --overwrite and another seed; it is killed after its first backup.
    original = checkpoint.save_run

    def save_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        raise RuntimeError("killed")

    monkeypatch.setattr(checkpoint, "save_run", save_then_crash)
    with pytest.raises(RuntimeError, match="killed"):
        cli.main([*argv, "--overwrite", "--seed", "5"])
    monkeypatch.setattr(checkpoint, "save_run", original)
    # Nothing of the old run is left: the new run's backup and log (killed before its
    # first row) only.
    assert sorted(p.name for p in out.iterdir()) == ["backup", "history.csv"]
    assert not list(csv.DictReader((out / "history.csv").open()))
    for command in (["evaluate", str(out)], ["play", str(out)],
                    ["evaluate", str(out / "policy")]):
        with pytest.raises(SystemExit) as info:
            cli.main(command)
        assert info.value.code == 2
        assert "holds a keras-lrne run that has not finished" in capsys.readouterr().err
    assert not (out / "evaluation.json").exists()
    # Finished with --resume, it is evaluated (and records the seed it ran with).
    assert cli.main([*argv, "--seed", "5", "--resume"]) == 0
    assert cli.main(["evaluate", str(out), "--episodes", "1"]) == 0
    assert json.loads((out / "summary.json").read_text())["args"]["seed"] == 5


def test_rl_commands_take_open_es(tmp_path):
    out = tmp_path / "es"
    assert cli.main(["control", "--env", "CartPole-v1", "--strategy", "es", "--population",
                     "4", "--generations", "2", "--max-episode-steps", "30", "--verbose", "0",
                     "--no-export", "--output", str(out)]) == 0
    run = json.loads((out / "summary.json").read_text())
    assert run["args"]["strategy"] == "es" and run["summary"]["env_steps"] > 0


def test_control_takes_discrete_envs_and_their_own_step_limit(tmp_path):
    # CartPole has Discrete actions (through `Environment`), Pendulum a Box (`Control`);
    # both keep the environment's registered step limit unless told otherwise.
    args = cli.build_parser().parse_args(["control", "--env", "CartPole-v1"])
    task, model = control.make_task_and_model(args)
    assert type(task).__name__ == "Environment" and task.max_episode_steps in (None, 500)
    assert model.output_shape == (None, 2)
    args = cli.build_parser().parse_args(["control", "--env", "Pendulum-v1"])
    task, _ = control.make_task_and_model(args)
    assert type(task).__name__ == "Control" and task.max_episode_steps in (None, 200)
    out = tmp_path / "cartpole"
    assert cli.main(["control", "--env", "CartPole-v1", "--population", "3", "--parents", "1",
                     "--generations", "2", "--verbose", "0", "--no-export", "--output",
                     str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert 2 * 3 <= summary["env_steps"] <= 2 * 3 * 500  # episodes end at CartPole's limit
    # history.csv holds what was logged: no empty val_* columns for environment tasks.
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert "episode_return" in header
    assert not [c for c in header if c.startswith("val_")]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["atari", "--game", "Frostbyte"], "Frostbite"),
        (["control", "--env", "HalfCheetah-v9"], "HalfCheetah-v5"),
        (["control", "--env", "CarRacing-v3"], "vector observations"),
        (["atari", "--population", "2", "--parents", "2"], "population_size=2"),
    ],
)
def test_rl_bad_input(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--generations", "1", "--verbose", "0", "--output", str(tmp_path)])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_play_prints_returns_and_rejects_bad_input(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ctl"
    assert cli.main(["control", "--env", "Pendulum-v1", "--max-episode-steps", "10",
                     "--population", "3", "--parents", "1", "--generations", "1",
                     "--verbose", "0", "--no-export", "--output", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["play", str(out / "policy"), "--env", "Pendulum-v1", "--episodes",
                     "3", "--seed", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    returns = [float(line.split("return ")[1]) for line in lines[:3]]
    assert [line.split(":")[0] for line in lines[:3]] == ["episode 1", "episode 2",
                                                         "episode 3"]
    assert lines[3].startswith("mean return over 3 episode(s): ")
    assert float(lines[3].split(": ")[1]) == pytest.approx(sum(returns) / 3, abs=0.01)
    # The same seed replays the same episodes.
    from keras_lrne.playback import play

    assert play(out, episodes=3, seed=5) == pytest.approx(returns, abs=0.01)
    bad = [
        (["play", str(tmp_path)], "not a keras-lrne policy"),
        (["play", str(tmp_path / "missing")], "No such directory"),
        (["play", str(out), "--env", "CartPole-v1"], "expects (3,)"),
        (["play", str(out), "--env", "Pendulum-v9"], "Pendulum-v1"),
        (["play", str(out), "--record", str(tmp_path / "x.png")], ".gif"),
    ]
    for argv, message in bad:
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        assert message in capsys.readouterr().err, argv
    # A renderer that fails (here: no interpreter for the replay) is a clear error.
    import keras_lrne.playback as playback

    monkeypatch.setattr(playback.sys, "executable", "false")
    with pytest.raises(SystemExit) as info:
        cli.main(["play", str(out), "--record", str(tmp_path / "x.gif")])
    assert info.value.code == 2 and "Cannot record" in capsys.readouterr().err
    monkeypatch.undo()
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "keras_lrne_policy.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid keras-lrne policy"):
        play(tmp_path / "fake")


def test_training_seeds_are_the_episode_seeds_a_run_used():
    from keras_lrne import tasks
    from keras_lrne.playback import training_seeds

    task = tasks.Environment("CartPole-v1", episodes=3, reevaluate_top=2,
                             reevaluate_episodes=5)
    used = training_seeds({"seed": 7, "generations": 4, "episodes": 3,
                           "reevaluate_episodes": 5})
    for generation in range(4):
        assert set(task.episode_seeds(7, generation)) <= used
        assert set(task.episode_seeds(7, generation, stage=1, episodes=5)) <= used
    assert training_seeds({}) == set()


@pytest.mark.parametrize("name, cls", [("cma-es", "CMAES"), ("sep-cma-es", "SepCMAES")])
def test_rl_commands_take_the_cma_es_strategies(tmp_path, capsys, name, cls):
    out = tmp_path / name
    assert cli.main(["control", "--env", "CartPole-v1", "--strategy", name, "--population",
                     "5", "--sigma", "0.3", "--generations", "2", "--max-episode-steps", "30",
                     "--verbose", "0", "--output", str(out)]) == 0
    run = json.loads((out / "summary.json").read_text())
    assert run["args"]["strategy"] == name and run["summary"]["env_steps"] > 0
    assert f"{cls}(population_size=5, sigma=0.3" in capsys.readouterr().out


on_jax_with_gymnax = pytest.mark.skipif(
    keras.config.backend() != "jax" or importlib.util.find_spec("gymnax") is None,
    reason="gymnax environments run on the JAX backend, with gymnax installed")


@pytest.mark.slow
@on_jax_with_gymnax
def test_control_evolves_on_a_gymnax_environment_and_evaluates_it(tmp_path, capsys):
    import jax
    import numpy as np

    from keras_lrne.tasks.environment import RunningNormalizer

    out = tmp_path / "gymnax"
    assert cli.main(["control", "--env", "gymnax:CartPole-v1", "--variant", "small",
                     "--population", "4", "--parents", "2", "--generations", "2",
                     "--max-episode-steps", "20", "--verbose", "0", "--no-export",
                     "--output", str(out)]) == 0
    assert "JaxEnvironment('CartPole-v1'" in capsys.readouterr().out
    stored = json.loads((out / "summary.json").read_text())
    assert 2 * 4 <= stored["summary"]["env_steps"] <= 2 * 4 * 20
    normalizer = stored["task_state"]["normalizer"]
    assert normalizer["count"] > 0  # observations are normalised
    marker = json.loads((out / "policy" / "keras_lrne_policy.json").read_text())
    assert (marker["kind"], marker["env"], marker["max_episode_steps"]) == (
        "gymnax", "CartPole-v1", 20)
    # Held-out episodes of the exported policy (observations -> actions, the
    # normalisation baked in) are those the elite plays on the gymnax environment with
    # the compiled rollout's keys for their seeds.
    assert cli.main(["evaluate", str(out), "--episodes", "2"]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    import gymnax

    env, params = gymnax.make("CartPole-v1")
    model = keras.saving.load_model(out / "model.keras")
    normalize = RunningNormalizer((4,))
    normalize.set_state(normalizer)
    expected = []
    for seed in result["episode_seeds"]:
        reset_key, root = jax.random.split(jax.random.PRNGKey(seed))
        obs, state = env.reset(reset_key, params)
        total = 0.0
        for t in range(20):
            action = int(np.argmax(keras.ops.convert_to_numpy(
                model(normalize(np.asarray(obs)[None])))[0]))
            obs, state, reward, terminated, truncated, _ = env.step(
                jax.random.fold_in(root, t), state, action, params)
            total += float(reward)
            if terminated or truncated:
                break
        expected.append(total)
    assert result["returns"] == expected
    assert cli.main(["play", str(out), "--episodes", "1", "--seed",
                     str(result["episode_seeds"][0])]) == 0
    assert f"episode 1: return {expected[0]:.2f}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli.main(["play", str(out), "--record", str(tmp_path / "x.gif")])
    assert info.value.code == 2 and "Cannot record" in capsys.readouterr().err


def test_a_gymnax_env_is_refused_before_any_work_off_jax_or_unknown(tmp_path, capsys):
    on_jax = keras.config.backend() == "jax"
    env = "gymnax:NoSuchEnv-v0" if on_jax else "gymnax:CartPole-v1"
    if on_jax:
        pytest.importorskip("gymnax")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        cli.main(["control", "--env", env, "--generations", "1", "--output", str(out)])
    assert info.value.code == 2
    error = capsys.readouterr().err
    if on_jax:
        assert "`--env`" in error and "CartPole-v1" in error and env in error
    else:
        assert env in error and "KERAS_BACKEND=jax" in error
        assert not out.exists()  # refused before the run directory was made

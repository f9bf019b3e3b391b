"""Random SIGKILLs against `keras-lrne lm` (or `fitness`, or `control`), each followed by
`--resume`: how many runs end identical to an uninterrupted run?

Each trial starts a fresh run, kills it with SIGKILL at a moment drawn uniformly over an
uninterrupted run's duration (start-up, generations, backup writes, the final output
writes), then runs the same command with `--resume` until it completes. The trial counts
as identical when `history.csv` (byte for byte, its timing cells aside), `lineage.npz`
and `summary.json` (timings and the output path aside) equal the uninterrupted run's, and
no temporary file, backup or lock file is left behind.

`--command fitness` runs `keras-lrne fitness` on a compiled accuracy fitness of a plain
`keras.Sequential` (a module written to the temporary directory); `--command control` a
CartPole policy (its History holds integer logs: `env_steps`, `failed_members`).

`--strategy` runs another strategy than the GA (`cma-es`, `snes`, `pgpe`, ...: those that
keep the model's starting weights in the run's checkpoint and lineage).

Usage:
    python benchmarks/kill_resume.py --trials 30 [--generations 6] [--seed 0]
                                     [--command lm|fitness|control] [--strategy ga]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

TIMING = {"generation_seconds", "member_evals_per_second", "member_tokens_per_second",
          "wall_seconds", "evolution_seconds", "first_stage_seconds", "frames_per_second",
          "policy_share"}


OBJECTIVE = """
import keras
import numpy as np


def build_model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(3)])


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")


def accuracy(logits, labels):
    predicted = keras.ops.cast(keras.ops.argmax(logits, axis=-1), "int32")
    return keras.ops.mean(keras.ops.cast(keras.ops.equal(predicted, labels), "float32"))
"""


def _command(output, generations, resume=False, command="lm", objective=None,
             strategy="ga"):
    if command == "fitness":
        run = ["fitness", f"{objective}:accuracy", "--model", f"{objective}:build_model",
               "--data", f"{objective}:load_data"]
    elif command == "control":
        run = ["control", "--env", "CartPole-v1", "--max-episode-steps", "50"]
    else:
        run = ["lm", "--sequence-length", "16", "--num-sequences", "8", "--vocab-size", "128"]
    selection = ["--parents", "2"] if strategy == "ga" else ["--strategy", strategy]
    return [sys.executable, "-m", "keras_lrne.cli", *run, "--population", "8", *selection,
            "--generations", str(generations), "--verbose", "0", "--output",
            output, *(["--resume"] if resume else [])]


def _run(cmd, delay=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    return proc.returncode, err


def _fingerprint(output):
    with open(os.path.join(output, "history.csv"), newline="") as f:
        lines = f.read().split("\r\n")  # the bytes as written (csv's line terminator)
    timing = {i for i, key in enumerate(lines[0].split(",")) if key in TIMING}
    rows = [",".join("" if i in timing else cell for i, cell in enumerate(line.split(",")))
            for line in lines]
    with open(os.path.join(output, "summary.json")) as f:
        summary = json.load(f)
    summary["summary"] = {k: v for k, v in summary["summary"].items() if k not in TIMING}
    summary["args"].pop("output")
    with open(os.path.join(output, "lineage.npz"), "rb") as f:
        lineage = f.read()
    return rows, summary, lineage


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--command", choices=("lm", "fitness", "control"), default="lm")
    parser.add_argument("--strategy", default="ga")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    root = tempfile.mkdtemp(prefix="lrne_kill_")
    objective = os.path.join(root, "objective.py")
    with open(objective, "w") as f:
        f.write(OBJECTIVE)

    def command(output, resume=False):
        return _command(output, args.generations, resume, args.command, objective,
                        args.strategy)

    straight = os.path.join(root, "straight")
    start = time.perf_counter()
    code, err = _run(command(straight))
    seconds = time.perf_counter() - start
    if code != 0:
        sys.exit(f"the uninterrupted run failed:\n{err[-3000:]}")
    expected = _fingerprint(straight)
    print(f"uninterrupted run: {seconds:.1f} s", flush=True)
    killed = identical = 0
    for trial in range(args.trials):
        output = os.path.join(root, f"trial{trial}")
        delay = float(rng.uniform(0.0, seconds))
        code, err = _run(command(output), delay=delay)
        was_killed = code == -signal.SIGKILL
        killed += was_killed
        code, err = _run(command(output, resume=True))
        ok = code == 0
        if ok:
            leftovers = [n for n in os.listdir(output) if ".tmp-" in n or ".old-" in n
                         or n in ("backup", ".keras-lrne.lock")]
            ok = not leftovers and _fingerprint(output) == expected
        identical += ok
        state = "killed" if was_killed else "had finished"
        print(f"trial {trial}: kill at {delay:5.1f} s ({state})"
              f" -> {'identical' if ok else 'DIFFERENT: ' + err[-500:]}", flush=True)
        shutil.rmtree(output, ignore_errors=True)
    print(f"{identical}/{args.trials} resumed runs identical to the uninterrupted run "
          f"({killed} of the kills landed before the run finished)")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

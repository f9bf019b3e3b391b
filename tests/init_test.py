"""`import keras_lrne` changes nothing global: it leaves the process's stderr descriptor
and its environment variables alone (on every backend, each checked in a fresh process)."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.backend_independent, pytest.mark.slow]

# While the main thread imports keras_lrne, a thread writes numbered lines to fd 2 and,
# after each write, checks that the bytes reached the file the parent gave as stderr (a
# redirection of fd 2 would send them elsewhere and show them late, if at all); and every
# code that sets or deletes an environment variable during the import is recorded.
PROGRAM = textwrap.dedent(
    """
    import os, sys, threading, time, traceback

    path = sys.argv[1]
    state = {"written": 0, "lines": 0, "late": 0, "importing": False, "during": 0}
    done = threading.Event()

    def write():
        while not done.is_set():
            line = f"line {state['lines']:05d}\\n".encode()
            os.write(2, line)
            state["written"] += len(line)
            state["lines"] += 1
            state["during"] += state["importing"]
            if os.path.getsize(path) < state["written"]:
                state["late"] += 1
            time.sleep(0.005)

    changes = []
    plain_set, plain_del = os._Environ.__setitem__, os._Environ.__delitem__
    skip = (os.__file__, os.path.join(os.path.dirname(os.__file__), "_collections_abc.py"),
            "<frozen os>", "<frozen _collections_abc>")

    def caller():
        for frame in reversed(traceback.extract_stack()[:-2]):
            if frame.filename not in skip:
                return frame.filename
        return "?"

    def setitem(self, key, value):
        changes.append((key, caller()))
        plain_set(self, key, value)

    def delitem(self, key):
        changes.append((key, caller()))
        plain_del(self, key)

    os._Environ.__setitem__, os._Environ.__delitem__ = setitem, delitem
    before = dict(os.environ)
    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(0.05)
    state["importing"] = True
    import keras_lrne  # noqa: F401
    state["importing"] = False
    time.sleep(0.05)
    done.set()
    thread.join()
    after = dict(os.environ)
    print("LINES", state["lines"], "DURING", state["during"], "LATE", state["late"])
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    package = os.path.dirname(keras_lrne.__file__)
    for key, filename in changes:
        print("SET", key, "BY", "KERAS_LRNE" if filename.startswith(package) else filename)
    print("UNRECORDED", sorted(changed - {key for key, _ in changes}))
    """
)


@pytest.fixture(scope="module", params=["tensorflow", "jax"])
def imported(request, tmp_path_factory):
    """Runs `PROGRAM` on one backend, as from a user's shell; returns (stdout, stderr)."""
    env = dict(os.environ, KERAS_BACKEND=request.param)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_LRNE_BACKEND_LOGS"):
        env.pop(name, None)
    path = tmp_path_factory.mktemp(request.param) / "stderr.txt"
    with open(path, "wb") as stderr:
        result = subprocess.run([sys.executable, "-c", PROGRAM, str(path)], env=env,
                                stdout=subprocess.PIPE, stderr=stderr, text=True,
                                timeout=300, check=False)
    text = path.read_text(errors="replace")
    assert result.returncode == 0, text[-4000:]
    return result.stdout, text


def test_import_leaves_stderr_to_other_threads(imported):
    stdout, stderr = imported
    counts = stdout.split()
    lines, during, late = (int(counts[counts.index(name) + 1])
                           for name in ("LINES", "DURING", "LATE"))
    assert during > 0  # the thread wrote while the package was being imported
    assert late == 0  # every write reached the real stderr at once
    numbers = [int(n) for n in re.findall(r"^line (\d{5})$", stderr, flags=re.MULTILINE)]
    assert numbers == list(range(lines))  # every byte of every line, in order


def test_import_sets_no_environment_variable(imported):
    stdout, _ = imported
    # Keras, TensorFlow and JAX set a few of their own (TF2_BEHAVIOR, KMP_*, ...);
    # keras-lrne's code sets none, and nothing changed that the record missed.
    assert "BY KERAS_LRNE" not in stdout, stdout
    assert "UNRECORDED []" in stdout, stdout

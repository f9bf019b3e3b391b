"""Python programs run in processes forked from a server that imported Keras once.

A test that runs a program in a process of its own (to SIGKILL it, or to load a saved
model with nothing of the test's state) paid a fresh interpreter's import of Keras and its
backend every time: about 40% of a tiny `keras-lrne lm` run's CPU time on 2 cores. Here
the standard library's forkserver (`multiprocessing.get_context("forkserver")`) imports
`keras_lrne.cli` (so Keras, on the backend of the test run) once per test process; each
program then runs in a child forked from it, which starts with those modules imported and
nothing else. The server only imports modules, so no thread pool or device exists yet
when it forks; every computation happens in the child.

A program that checks what a fresh interpreter prints or imports at start-up (the
console script's start-up lines, JAX without TensorFlow) still runs with `subprocess`.
"""

import multiprocessing
import os
import runpy
import sys
import tempfile

_PRELOAD = ["keras_lrne.cli"]
_context = None


def _get_context():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(_PRELOAD)
    return _context


def _child(script, argv, env, out_path, err_path):
    """Runs `script` (a path, or source code after `-c`) as `__main__` with `argv`."""
    os.environ.update({k: v for k, v in env.items() if v is not None})
    for name in [k for k, v in env.items() if v is None]:
        os.environ.pop(name, None)
    for fd, path in ((1, out_path), (2, err_path)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    code = 0
    try:
        if script[0] == "-c":
            sys.argv = ["-c", *argv]
            exec(compile(script[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = [script[0], *argv]
            runpy.run_path(script[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (exit_.code is not None)
        if not isinstance(exit_.code, int) and exit_.code is not None:
            print(exit_.code, file=sys.stderr)
    except BaseException:  # reported as an interpreter would
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Completed:
    """What `run` returns: `returncode` (negative: killed by that signal), `stdout`,
    `stderr`, as `subprocess.CompletedProcess` has them."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(script, args=(), env=None, timeout=600, kill_after=None):
    """Runs a program in a child of the forkserver and waits for it.

    Args:
        script: the path of a Python file, or `("-c", source)`.
        args: its command-line arguments (`sys.argv[1:]`).
        env: environment variables to set in the child (`None` values remove one).
        timeout: seconds to wait before the child is killed and an error raised.
        kill_after: seconds after which the child is SIGKILLed (no error; its
            `returncode` is then `-9`), unless it ended before.

    Returns:
        A `Completed` with the child's exit code and its standard output and error.
    """
    if isinstance(script, (str, os.PathLike)):
        script = (os.fspath(script),)
    with tempfile.TemporaryDirectory() as folder:
        out, err = os.path.join(folder, "out"), os.path.join(folder, "err")
        process = _get_context().Process(
            target=_child, args=(script, [str(a) for a in args], dict(env or {}), out, err))
        process.start()
        process.join(kill_after if kill_after is not None else timeout)
        if process.is_alive():
            process.kill()
            process.join()
            if kill_after is None:
                raise TimeoutError(f"{script[0]} {' '.join(map(str, args))} ran past "
                                   f"{timeout} s")
        return Completed(process.exitcode, _read(out), _read(err))


def _read(path):
    """The text of a file the child wrote ("" if it was killed before opening it)."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""

"""Evolution checkpoints: everything needed to continue a run, written atomically.

`model.evolve(..., callbacks=[keras.callbacks.BackupAndRestore(backup_dir)])` writes
`backup_dir/evolution_state.lrne` after every generation and, when started again with the
same callback, continues from the last completed generation. This file is the single
source of truth of a run: `evolve()` handles the `BackupAndRestore` callback itself and
writes none of Keras' own backup files (`latest.weights.h5`, `training_metadata.json`),
whose in-place writes a crash can tear. The file holds the population, the strategy
state, the lineage, the History so far, the task state (e.g. observation normalisers) and
the run's signature (settings, data digests, model and loss); per-generation random
numbers derive from (run seed, generation), so no other RNG state is needed.

Format: a 64-character SHA-256 hex digest of the payload, a newline, then the payload
(a `numpy.savez` archive). Every file here is written to a temporary name, flushed to
disk and renamed over the previous one (`atomic_write`), so a crash leaves either the old
or the new file; a truncated or corrupted checkpoint fails the digest check and is
reported, never used.

One process at a time: `BackupLock` holds an exclusive lock on `backup_dir/lock` for the
whole run, and a second process gets an error naming the directory and the process that
holds it.
"""

import contextlib
import glob
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import time

import numpy as np

STATE_FILE = "evolution_state.lrne"
LOCK_FILE = "lock"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupted, or from different settings)."""


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, data):
    """Writes `data` (bytes or str) to `path` so that a crash leaves the old or new file.

    The bytes go to `path.tmp-PID`, are flushed to disk, renamed over `path`, and the
    directory entry is flushed too.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    _remove_stale(f"{glob.escape(path)}.tmp-*")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on success renames it over `path`.

    For writers that take a path (Keras' `model.save`, `model.export`, matplotlib): the
    file or directory they write appears at `path` only once complete. A directory that
    already exists at `path` is replaced. The temporary name keeps `path`'s extension
    (Keras checks it).
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    for kind in ("tmp", "old"):
        _remove_stale(os.path.join(glob.escape(directory),
                                   f".{glob.escape(stem)}.{kind}-*{glob.escape(ext)}"))
    tmp = os.path.join(directory, f".{stem}.tmp-{os.getpid()}{ext}")
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):
            old = os.path.join(directory, f".{stem}.old-{os.getpid()}{ext}")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_directory(directory)


def _remove_stale(pattern):
    """Removes what a crashed writer left under temporary names (writers are locked out
    of each other's directories, so these are never another live process's)."""
    for stale in glob.glob(pattern):
        _remove(stale)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


def save(path, arrays, meta):
    """Atomically writes `arrays` (dict of numpy arrays) and `meta` (JSON-able dict)."""
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write(path, digest + b"\n" + payload)


def load(path):
    """Reads a checkpoint written by `save`; raises `CheckpointError` if it is damaged."""
    if os.path.isdir(path):
        raise CheckpointError(
            f"The evolution checkpoint {path!r} is a directory, not a checkpoint file. "
            "It was not used and has not been modified; move it away to start the run "
            "from scratch."
        )
    with open(path, "rb") as f:
        data = f.read()
    digest, _, payload = data.partition(b"\n")
    if len(digest) != 64 or hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(
            f"The evolution checkpoint {path!r} is truncated or corrupted (its SHA-256 "
            "does not match its contents). It was not used and has not been modified; "
            "delete it to start the run from scratch."
        )
    with np.load(io.BytesIO(payload)) as npz:
        meta = json.loads(bytes(npz["__meta__"]).decode())
        arrays = {k: npz[k] for k in npz.files if k != "__meta__"}
    return arrays, meta


def _differences(saved, current, prefix=""):
    """(dotted key, saved value, current value) for every leaf that differs."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved or key not in current:
                out.append((name, saved.get(key, "<absent>"), current.get(key, "<absent>")))
            else:
                out.extend(_differences(saved[key], current[key], name))
        return out
    if (isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current)
            and any(isinstance(v, (dict, list)) for v in saved + current)):
        out = []
        for i, (a, b) in enumerate(zip(saved, current)):
            out.extend(_differences(a, b, f"{prefix}[{i}]"))
        return out
    return [] if saved == current else [(prefix, saved, current)]


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_settings(saved, current, path):
    """Raises `CheckpointError` naming every setting that differs from the checkpoint's."""
    differ = _differences(saved, current)
    if differ:
        details = "; ".join(
            f"{k}: checkpoint {_short(a)} vs now {_short(b)}" for k, a, b in differ
        )
        raise CheckpointError(
            f"Cannot resume from {path!r}: the run's settings differ from the "
            f"checkpoint's ({details}). Use the checkpoint's settings, or another backup "
            "directory to start a new run."
        )


def streaming_digest(*arrays):
    """SHA-256 hex digest of arrays' dtypes, shapes and every byte (no full copy)."""
    h = hashlib.sha256()
    for array in arrays:
        if array is None:
            h.update(b"none;")
            continue
        array = np.asarray(array)
        h.update(f"{array.dtype.str}{array.shape};".encode())
        if array.dtype == object:
            for item in array.reshape(-1):
                h.update(repr(item).encode("utf-8", "backslashreplace") + b"\0")
            continue
        flat = np.ascontiguousarray(array).reshape(-1)
        step = max(1, (1 << 24) // max(flat.itemsize, 1))
        for start in range(0, flat.size, step):
            h.update(memoryview(flat[start:start + step]).cast("B"))
    return h.hexdigest()


class BackupInUseError(RuntimeError):
    """Another process holds a backup directory's lock."""


_HELD = {}


class BackupLock:
    """An exclusive, per-process re-entrant lock on a backup directory.

    Held for the whole of a run (and by the CLI until its outputs are written), so two
    processes never write one backup. The lock file records who holds it; the operating
    system releases the lock when the holder dies, even by SIGKILL.

    Args:
        directory: the backup directory (created if needed).
        name: the lock file's name in `directory`.
        what: how errors call `directory`.
    """

    def __init__(self, directory, name=LOCK_FILE, what="backup directory"):
        self.directory = os.fspath(directory)
        self.what = what
        self.path = os.path.join(self.directory, name)
        self._key = os.path.realpath(self.path)
        self._acquired = False

    def acquire(self):
        held = _HELD.get(self._key)
        if held is not None:
            held[1] += 1
            self._acquired = True
            return self
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): run unlocked
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                try:
                    info = json.loads(holder)
                    who = (f"process {info.get('pid')} on {info.get('host')!r} "
                           f"({info.get('command')!r}, since {info.get('since')})")
                except ValueError:
                    who = "another process"
                raise BackupInUseError(
                    f"The {self.what} {self.directory!r} is in use by {who}. Two runs "
                    f"cannot share one {self.what}: wait for that run to finish or stop "
                    f"it, or use another {self.what}."
                ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "command": " ".join(sys.argv)[:300],
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[self._key] = [fd, 1]
        self._acquired = True
        return self

    def release(self):
        if not self._acquired:
            return
        self._acquired = False
        held = _HELD.get(self._key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self._key]
            os.close(held[0])  # closing the descriptor releases the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

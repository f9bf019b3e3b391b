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

One run at a time: `BackupLock` holds an exclusive lock on `backup_dir/lock` for the
whole run, and a second run (in another process, or in another thread of this one) gets an
error naming the directory and who holds it.
"""

import contextlib
import glob
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid

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


#: Temporary names this process is writing now (they are never stale).
_WRITING = set()
_WRITING_GUARD = threading.Lock()
#: The process id in a temporary name: `...tmp-PID-THREAD-RANDOM...` (or `tmp-PID`).
_TEMP_PID = re.compile(r"\.(?:tmp|old)-(\d+)(?:-|\.|$)")


def _writer_tag():
    """`PID-THREAD-RANDOM`: a temporary name no other writer (process or thread) uses."""
    return f"{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def _writing(*paths):
    """Marks `paths` as being written by this process while the block runs."""
    paths = {os.path.abspath(p) for p in paths}
    with _WRITING_GUARD:
        _WRITING.update(paths)
    try:
        yield
    finally:
        with _WRITING_GUARD:
            _WRITING.difference_update(paths)


def atomic_write(path, data):
    """Writes `data` (bytes or str) to `path` so that a crash leaves the old or new file.

    The bytes go to a temporary name unique to this writer (`path.tmp-PID-THREAD-RANDOM`),
    are flushed to disk, renamed over `path`, and the directory entry is flushed too.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    _remove_stale(f"{glob.escape(path)}.tmp-*")
    tmp = f"{path}.tmp-{_writer_tag()}"
    with _writing(tmp):
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
    (Keras checks it) and is unique to this writer.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    for kind in ("tmp", "old"):
        _remove_stale(os.path.join(glob.escape(directory),
                                   f".{glob.escape(stem)}.{kind}-*{glob.escape(ext)}"))
    tag = _writer_tag()
    tmp = os.path.join(directory, f".{stem}.tmp-{tag}{ext}")
    old = os.path.join(directory, f".{stem}.old-{tag}{ext}")
    with _writing(tmp, old):
        try:
            yield tmp
            if os.path.isdir(tmp) and os.path.isdir(path):
                os.replace(path, old)
                os.replace(tmp, path)
                _remove(old)
            else:
                os.replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise
    _fsync_directory(directory)


def _pid_alive(pid):
    """Whether process `pid` runs on this machine (True where that cannot be told)."""
    if os.name == "nt":  # os.kill would terminate it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def _is_stale(path):
    """Whether a temporary file was left by a writer that is gone: a process that no
    longer runs, or this process when no thread of it is writing that name."""
    match = _TEMP_PID.search(os.path.basename(path))
    if match is None:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        with _WRITING_GUARD:
            return path not in _WRITING
    return not _pid_alive(pid)


def _remove_stale(pattern):
    """Removes what crashed writers left under temporary names; a live writer's
    temporary file (another process's, or another thread's) is left alone."""
    for stale in glob.glob(pattern):
        if _is_stale(os.path.abspath(stale)):
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


#: Settings a resumed run may change: recorded in the checkpoint, not compared (results
#: do not depend on the devices the population is split over).
MAY_CHANGE_ON_RESUME = ("distribution",)


def check_settings(saved, current, path):
    """Raises `CheckpointError` naming every setting that differs from the checkpoint's
    (except `MAY_CHANGE_ON_RESUME`)."""
    saved, current = ({k: v for k, v in d.items() if k not in MAY_CHANGE_ON_RESUME}
                      for d in (saved, current))
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
    """Another run (in another process, or another thread) holds a directory's lock."""


#: The locks this process holds: `{lock file's real path: _Holding}`.
_HELD = {}
_HELD_GUARD = threading.Lock()


class _Holding:
    """One held lock: its descriptor, who holds it and how many times it was entered."""

    def __init__(self, fd, owner, info):
        self.fd, self.owner, self.info = fd, owner, info
        self.thread = threading.get_ident()
        self.count = 1


def _describe(info):
    try:
        info = json.loads(info) if isinstance(info, str) else info
        where = (f"thread {info['thread']!r} of this process" if info.get("thread")
                 else f"process {info.get('pid')} on {info.get('host')!r}")
        return f"{where} ({info.get('command')!r}, since {info.get('since')})"
    except (ValueError, TypeError, KeyError, AttributeError):
        return "another process"


class BackupLock:
    """An exclusive lock on a directory, held by one run.

    Held for the whole of a run (and by the CLI until its outputs are written), so two
    runs never write one directory: a second run is refused whether it runs in another
    process or in another thread of this one. The lock is re-entrant only for its owner in
    the thread that took it (`owner`: by default the `BackupLock` object itself, so a
    code path that acquires the same object twice nests; another object given the same
    `owner` nests too). The lock file records who holds it; the operating system releases
    the lock when the holder dies, even by SIGKILL.

    Args:
        directory: the directory (created if needed).
        name: the lock file's name in `directory`.
        what: how errors call `directory`.
        owner: the run the lock is held for (see above). Default: this object.
        remove: remove the lock file when the lock is released for the last time (while
            it is still held, so no other run can be holding that file).
    """

    def __init__(self, directory, name=LOCK_FILE, what="backup directory", owner=None,
                 remove=False):
        self.directory = os.fspath(directory)
        self.what = what
        self.path = os.path.join(self.directory, name)
        self._key = os.path.realpath(self.path)
        self._owner = self if owner is None else owner
        self._remove = remove
        self._acquired = 0

    def _in_use(self, who):
        return BackupInUseError(
            f"The {self.what} {self.directory!r} is in use by {who}. Two runs cannot share "
            f"one {self.what}: wait for that run to finish or stop it, or use another "
            f"{self.what}."
        )

    def acquire(self):
        with _HELD_GUARD:
            held = _HELD.get(self._key)
            if held is not None:
                if held.thread != threading.get_ident() or held.owner is not self._owner:
                    raise self._in_use(_describe(held.info))
                held.count += 1
                self._acquired += 1
                return self
            os.makedirs(self.directory, exist_ok=True)
            fd = self._lock_file()
            thread = threading.current_thread()
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "command": " ".join(sys.argv)[:300],
                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            _HELD[self._key] = _Holding(fd, self._owner, {**info, "thread": thread.name})
            self._acquired += 1
            return self

    def _lock_file(self):
        """Opens and locks the lock file; returns its descriptor."""
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): run unlocked
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                raise self._in_use(_describe(holder)) from None
            # A holder removes the file before releasing it: a lock taken on a file that
            # is no longer at `path` guards nothing; take the one there now.
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                now = None
            mine = os.fstat(fd)
            if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
                return fd
            os.close(fd)

    def release(self):
        if not self._acquired:
            return
        self._acquired -= 1
        with _HELD_GUARD:
            held = _HELD.get(self._key)
            if held is None:
                return
            held.count -= 1
            if held.count == 0:
                del _HELD[self._key]
                if self._remove:
                    with contextlib.suppress(OSError):
                        os.remove(self.path)  # still locked: nobody else holds this file
                os.close(held.fd)  # closing the descriptor releases the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# -- strategy states, generically ------------------------------------------------------------
def _is_scalar(value):
    return value is None or isinstance(
        value, (bool, int, float, str, np.bool_, np.integer, np.floating))


def _field_array(name, value, to_numpy):
    try:
        array = np.asarray(to_numpy(value))
    except Exception as error:
        array, detail = None, f" ({error})"
    else:
        detail = ""
    if array is None or array.dtype == object:
        raise TypeError(
            f"Cannot checkpoint the strategy state's field {name!r} of type "
            f"{type(value).__name__}: state fields must be JSON-able scalars, arrays or "
            f"lists of arrays{detail}."
        )
    return array


def state_to_arrays(state, prefix="state/"):
    """Splits a strategy state (NamedTuple or dataclass) into `(arrays, meta)`.

    Every field must be a JSON-able scalar (None, bool, int, float, str), a list/tuple of
    such scalars, an array or tensor, or a list/tuple of arrays or tensors: `arrays` gets
    the arrays (host copies, bit-exact), `meta` the scalars and the layout.
    `state_from_arrays` inverts it.
    """
    from keras_lrne import backend as lrne_backend
    from keras_lrne.strategies.base import state_fields

    to_numpy = lrne_backend.get().to_numpy
    arrays, meta = {}, {"scalars": {}, "arrays": [], "lists": {}}
    for name, value in state_fields(state).items():
        if _is_scalar(value):
            meta["scalars"][name] = value.item() if isinstance(value, np.generic) else value
        elif isinstance(value, (list, tuple)) and value and all(map(_is_scalar, value)):
            meta.setdefault("sequences", {})[name] = {
                "tuple": isinstance(value, tuple),
                "values": [v.item() if isinstance(v, np.generic) else v for v in value]}
        elif isinstance(value, (list, tuple)):
            meta["lists"][name] = len(value)
            for i, item in enumerate(value):
                arrays[f"{prefix}{name}/{i}"] = _field_array(f"{name}[{i}]", item, to_numpy)
        else:
            arrays[f"{prefix}{name}"] = _field_array(name, value, to_numpy)
            meta["arrays"].append(name)
    return arrays, meta


def _like(template, array):
    """`array` as a numpy array when `template` is one (or None), else as a tensor."""
    if template is None or isinstance(template, np.ndarray):
        return array
    import keras

    return keras.ops.convert_to_tensor(array)


def state_from_arrays(template, arrays, meta, prefix="state/"):
    """The state saved by `state_to_arrays`, with the type of `template` (e.g. the
    state of a fresh `strategy.init(...)`): arrays come back as numpy arrays where the
    template holds numpy arrays or None, else as tensors."""
    from keras_lrne.strategies.base import replace_state, state_fields

    fields = state_fields(template)
    changes = {}
    for name, value in meta["scalars"].items():
        changes[name] = value
    for name, sequence in meta.get("sequences", {}).items():
        changes[name] = (tuple if sequence["tuple"] else list)(sequence["values"])
    for name in meta["arrays"]:
        changes[name] = _like(fields.get(name), arrays[f"{prefix}{name}"])
    for name, length in meta["lists"].items():
        items = fields.get(name) or [None] * length
        if len(items) != length:
            items = [items[0]] * length
        changes[name] = [_like(items[i], arrays[f"{prefix}{name}/{i}"])
                         for i in range(length)]
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise CheckpointError(
            f"The checkpoint's strategy state has fields {unknown} that the strategy's "
            f"state type {type(template).__name__} does not have."
        )
    return replace_state(template, **changes)


def logged_value(value):
    """A log value as Keras' callbacks receive it: a Python float where it converts to
    one (`keras.callbacks.CallbackList` converts every value so), else unchanged.

    The History a checkpoint holds is kept in this form, so that a resumed run's History
    and `CSVLogger` file hold the same values, written the same way (`90.0`, not `90`),
    as an uninterrupted run's.
    """
    if isinstance(value, float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def save_run(path, strategy_state, lineage, history, task_state, settings, stopped=False):
    """Atomically writes everything needed to continue a run to `path`.

    Args:
        path: the checkpoint file.
        strategy_state: the strategy's state after the last completed generation.
        lineage: the run's `keras_lrne.Lineage`.
        history: `{key: [value per generation]}` so far.
        task_state: the task's `get_state()` (JSON-able) or None.
        settings: the run's signature (see `check_settings`).
        stopped: whether a callback stopped the run.
    """
    arrays, state_meta = state_to_arrays(strategy_state)
    for name, rows in lineage.records.items():
        arrays[f"lineage/{name}"] = np.asarray(rows)
    lineage_meta = {"records": list(lineage.records), "generations": lineage._count}
    if lineage.start is not None:  # the weights the run started from
        lineage_meta["start"] = len(lineage.start)
        for i, value in enumerate(lineage.start):
            arrays[f"lineage/start/{i}"] = np.asarray(value)
    meta = {
        "settings": settings,
        "state": state_meta,
        "lineage": lineage_meta,
        "history": history,
        "task_state": task_state,
        "stopped": bool(stopped),
    }
    save(path, arrays, json.loads(json.dumps(meta, default=float)))


def saved_start(checkpoint):
    """The starting weights a loaded checkpoint (`load(path)`) keeps with its lineage
    (see `keras_lrne.Lineage.start`), or None: what a resumed run starts from, so that
    its lineage, rebuilt members and Ray workers are those of the run it continues."""
    arrays, meta = checkpoint
    count = meta.get("lineage", {}).get("start")
    if count is None:
        return None
    return [np.asarray(arrays[f"lineage/start/{i}"]) for i in range(int(count))]


def restore_run(checkpoint, path, settings, template, lineage, task):
    """Continues a run from a loaded checkpoint (`load(path)`).

    Checks the settings (naming every difference), restores the strategy state into the
    type of `template`, refills `lineage` and the task's state.

    Returns:
        `(state, history, stopped)`.
    """
    arrays, meta = checkpoint
    if "state" not in meta or "lineage" not in meta:
        raise CheckpointError(
            f"The evolution checkpoint {path!r} was written by an older keras-lrne, whose "
            "checkpoints this version cannot continue. It was not used and has not been "
            "modified; delete it (or use another backup directory) to start the run again."
        )
    check_settings(meta["settings"], settings, path)
    state = state_from_arrays(template, arrays, meta["state"])
    records = meta["lineage"]["records"]
    for g in range(int(meta["lineage"]["generations"])):
        lineage.record(**{name: arrays[f"lineage/{name}"][g] for name in records})
    if meta.get("task_state") and hasattr(task, "set_state"):
        task.set_state(meta["task_state"])
    history = {k: [logged_value(x) for x in v] for k, v in meta["history"].items()}
    return state, history, bool(meta.get("stopped"))


class RunBackup:
    """What `evolve()` does for a `keras.callbacks.BackupAndRestore` callback.

    keras-lrne's atomic checkpoint (`STATE_FILE` in the callback's `backup_dir`) is the
    run's only backup: `evolve()` handles the callback itself, so Keras' in-place
    `latest.weights.h5` / `training_metadata.json` writes (which a crash can tear, and
    whose h5 saves grow memory over long runs) are never made, and such files left in the
    directory are never read. The callback's `save_freq` ("epoch", or every N
    generations: one generation is one epoch) and `delete_checkpoint` are honoured. The
    directory is locked for the run (`BackupLock`).

    Args:
        callback: the `keras.callbacks.BackupAndRestore` instance.
    """

    def __init__(self, callback):
        self.callback = callback
        self.directory = os.fspath(callback.backup_dir)
        self.path = os.path.join(self.directory, STATE_FILE)
        freq = callback.save_freq
        self.every = 1 if freq == "epoch" else (int(freq) if freq else 0)
        self.lock = BackupLock(self.directory)
        self.saved = None  # the generation count of the last checkpoint written

    @classmethod
    def find(cls, callbacks):
        """A `RunBackup` for the `BackupAndRestore` among `callbacks`, or None."""
        import keras

        callback = next((c for c in callbacks or []
                         if isinstance(c, keras.callbacks.BackupAndRestore)), None)
        return None if callback is None else cls(callback)

    def open(self):
        """Checks the directory, locks it, and returns the checkpoint (or None).

        Fails before any work when the directory is not writable, is in use by another
        process, or holds a damaged checkpoint.
        """
        try:
            os.makedirs(self.directory, exist_ok=True)
            probe = os.path.join(self.directory, f".lrne_write_test-{_writer_tag()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as error:
            raise ValueError(
                "The `BackupAndRestore` directory is not writable, so the run could not be "
                f"resumed after a failure. Received: backup_dir={self.directory!r} ({error})"
            ) from error
        self.lock.acquire()
        try:
            return load(self.path) if os.path.lexists(self.path) else None
        except BaseException:
            self.lock.release()
            raise

    def restore(self, checkpoint, settings, template, lineage, task):
        """Restores the run `open()` returned (see `restore_run`): `(state, history,
        stopped)`; fails naming every setting that differs from `settings`."""
        return restore_run(checkpoint, self.path, settings, template, lineage, task)

    def resume_csv_loggers(self, callbacks, history, generations):
        """Rewrites the `CSVLogger` files among `callbacks` to the restored History's
        first `generations` rows (see `rewrite_csv_loggers`); returns those loggers."""
        return rewrite_csv_loggers(callbacks, history, generations)

    def save(self, state, lineage, history, task, settings, generation):
        """Saves after `generation` when `save_freq` says so."""
        if self.every and (generation + 1) % self.every == 0:
            save_run(self.path, state, lineage, history, _task_state(task), settings)
            self.saved = state.generation

    def finish(self, state, lineage, history, task, settings, stopped):
        """Saves the end of a run: all of it, and whether a callback stopped it early
        (a resumed stopped run runs no more generations)."""
        if stopped or self.saved != state.generation:
            save_run(self.path, state, lineage, history, _task_state(task), settings,
                     stopped)

    def close(self, completed):
        """Releases the lock; after a completed run, deletes the backup if asked to."""
        try:
            if completed and self.callback.delete_checkpoint:
                shutil.rmtree(self.directory, ignore_errors=True)
        finally:
            self.lock.release()


def _task_state(task):
    return task.get_state() if hasattr(task, "get_state") else None


def rewrite_csv_loggers(callbacks, history, generations):
    """Rewrites every `CSVLogger` file from the checkpoint's History, then appends to it.

    A crash between the checkpoint and the logger's row (or in the middle of a row) would
    otherwise lose or tear a generation: after a resume the file has every completed
    generation exactly once, written by Keras' own `CSVLogger` (same format).

    Returns:
        The loggers rewritten.
    """
    import keras

    loggers = [c for c in callbacks or [] if isinstance(c, keras.callbacks.CSVLogger)]
    for logger in loggers:
        with atomic_path(logger.filename) as tmp:
            writer = keras.callbacks.CSVLogger(tmp, separator=logger.sep)
            writer.on_train_begin()
            if history:
                writer.keys = sorted(history)
            for generation in range(generations):
                writer.on_epoch_end(
                    generation,
                    {k: logged_value(v[generation]) for k, v in history.items()
                     if generation < len(v)},
                )
            writer.on_train_end()
    return loggers

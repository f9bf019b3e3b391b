"""The checkpoint module's file primitives: the run lock and atomic writes, across
threads and processes (no evolution: see tests/models/resume_test.py for runs)."""

import os
import subprocess
import sys
import threading

import pytest

from keras_lrne import checkpoint

pytestmark = pytest.mark.backend_independent


def _in_thread(target):
    """Runs `target()` in a thread; returns (thread, its result box)."""
    box = {}

    def run():
        try:
            box["value"] = target()
        except BaseException as error:
            box["error"] = error

    thread = threading.Thread(target=run, name="other-run")
    thread.start()
    return thread, box


def test_a_second_thread_is_refused_as_a_second_process_is(tmp_path):
    held, release = threading.Event(), threading.Event()

    def hold():
        with checkpoint.BackupLock(tmp_path):
            held.set()
            release.wait(30)

    thread, box = _in_thread(hold)
    try:
        assert held.wait(30)
        with pytest.raises(checkpoint.BackupInUseError) as info:
            checkpoint.BackupLock(tmp_path).acquire()
        message = str(info.value)
        assert repr(str(tmp_path)) in message and "thread 'other-run'" in message
    finally:
        release.set()
        thread.join(30)
    assert "error" not in box
    assert not checkpoint._HELD  # released: the next run may take it
    with checkpoint.BackupLock(tmp_path):
        pass


def test_the_owner_nests_in_its_own_thread(tmp_path):
    lock = checkpoint.BackupLock(tmp_path)
    with lock:
        with lock:  # the same run entering again (e.g. a helper that locks too)
            pass
        # Still held after the inner release: another object (another run) is refused...
        with pytest.raises(checkpoint.BackupInUseError):
            checkpoint.BackupLock(tmp_path).acquire()
        # ...unless it names the same owner, in the same thread.
        with checkpoint.BackupLock(tmp_path, owner=lock):
            pass
        thread, box = _in_thread(lambda: checkpoint.BackupLock(tmp_path, owner=lock).acquire())
        thread.join(30)
        assert isinstance(box.get("error"), checkpoint.BackupInUseError)
    assert not checkpoint._HELD


def test_a_removed_lock_file_is_never_shared(tmp_path, monkeypatch):
    first = checkpoint.BackupLock(tmp_path, name="run.lock", remove=True)
    with first:
        assert (tmp_path / "run.lock").is_file()
    assert not (tmp_path / "run.lock").exists()  # removed by its holder, while it held it
    # A run that opened the file just before its holder removed it locks that removed
    # file; it must take the lock on the file at the path instead (else two runs could
    # each hold "the" lock).
    opened = []
    real_open = os.open

    def racing_open(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if not opened:
            os.remove(path)  # the holder removes it and releases it now
        opened.append(fd)
        return fd

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.os, "open", racing_open)
        lock = checkpoint.BackupLock(tmp_path, name="race.lock").acquire()
    try:
        assert len(opened) == 2 and (tmp_path / "race.lock").is_file()
        held = os.fstat(checkpoint._HELD[lock._key].fd)
        assert held.st_ino == os.stat(tmp_path / "race.lock").st_ino
    finally:
        lock.release()


def test_two_threads_writing_one_file_never_share_a_temporary_name(tmp_path, monkeypatch):
    target = tmp_path / "evolution_state.lrne"
    paused, resume = threading.Event(), threading.Event()
    replace = os.replace

    def slow_replace(src, dst):
        if threading.current_thread().name == "other-run" and not paused.is_set():
            paused.set()  # written under its temporary name, not yet renamed
            resume.wait(30)
        return replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", slow_replace)
    thread, box = _in_thread(lambda: checkpoint.atomic_write(target, b"first"))
    try:
        assert paused.wait(30)
        checkpoint.atomic_write(target, b"second")  # must leave the other's file alone
    finally:
        resume.set()
        thread.join(30)
    assert "error" not in box, box.get("error")
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_only_the_temporary_files_of_gone_writers_are_removed(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    target = tmp_path / "summary.json"
    try:
        crashed = tmp_path / f"summary.json.tmp-{gone.pid}-1-abcdef01"
        legacy = tmp_path / f"summary.json.tmp-{gone.pid}"  # an older version's name
        writing = tmp_path / f"summary.json.tmp-{live.pid}-1-abcdef01"
        ours = tmp_path / f"summary.json.tmp-{os.getpid()}-1-abcdef01"  # no thread writes it
        for path in (crashed, legacy, writing, ours):
            path.write_text("partial")
        checkpoint.atomic_write(target, "{}")
        assert target.read_text() == "{}"
        assert writing.exists()
        assert not crashed.exists() and not legacy.exists() and not ours.exists()
        # atomic_path (directories, files Keras writes) follows the same rule.
        left = tmp_path / f".model.tmp-{live.pid}-1-abcdef01.keras"
        left.write_text("partial")
        dead = tmp_path / f".model.old-{gone.pid}-1-abcdef01.keras"
        dead.mkdir()
        with checkpoint.atomic_path(tmp_path / "model.keras") as tmp, open(tmp, "w") as f:
            f.write("model")
        assert left.exists() and not dead.exists()
    finally:
        live.kill()
        live.wait()

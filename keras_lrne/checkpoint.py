"""Evolution checkpoints: everything needed to continue a run, written atomically.

`model.evolve(..., callbacks=[keras.callbacks.BackupAndRestore(backup_dir)])` writes
`backup_dir/evolution_state.lrne` after every generation (beside the callback's own
weights and metadata) and, when started again with the same callback, continues from the
last completed generation. The file holds the population, the strategy state, the
lineage, the History so far, the task state (e.g. observation normalisers) and the run's
settings; per-generation random numbers derive from (run seed, generation), so no other
RNG state is needed.

Format: a 64-character SHA-256 hex digest of the payload, a newline, then the payload
(a `numpy.savez` archive). The file is written to a temporary name, flushed to disk and
renamed over the previous one, so a crash leaves either the old or the new checkpoint; a
truncated or corrupted file fails the digest check and is reported, never used.
"""

import hashlib
import io
import json
import os

import numpy as np

STATE_FILE = "evolution_state.lrne"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupted, or from different settings)."""


def save(path, arrays, meta):
    """Atomically writes `arrays` (dict of numpy arrays) and `meta` (JSON-able dict)."""
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(digest + b"\n" + payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path):
    """Reads a checkpoint written by `save`; raises `CheckpointError` if it is damaged."""
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


def check_settings(saved, current, path):
    """Raises `CheckpointError` naming every setting that differs from the checkpoint's."""
    keys = sorted(set(saved) | set(current))
    differ = [k for k in keys if saved.get(k) != current.get(k)]
    if differ:
        details = "; ".join(
            f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in differ
        )
        raise CheckpointError(
            f"Cannot resume from {path!r}: the run's settings differ from the "
            f"checkpoint's ({details}). Use the checkpoint's settings, or another backup "
            "directory to start a new run."
        )

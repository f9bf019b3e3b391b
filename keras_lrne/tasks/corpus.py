"""Private corpus loaders for the language-modelling task.

Every loader returns a `Corpus`: either a `tf.data.Dataset` of scalar
`tf.string` documents (to be tokenised) or a 1-D numpy int32 stream of token
ids (already tokenised). Nothing here touches the network unless a registered
TFDS dataset name is given and that dataset is not prepared locally.
"""

import difflib
import os
from typing import NamedTuple

import numpy as np

from keras_lrne._net import probe
from keras_lrne._tf import import_tensorflow

tf = import_tensorflow("LanguageModeling")

_ID_CHUNK = 65536


class Corpus(NamedTuple):
    """Documents (`texts`, a dataset of scalar strings) or a token `ids` stream."""

    texts: "tf.data.Dataset | None" = None
    ids: "np.ndarray | None" = None


def load_default_corpus():
    """The embedded offline corpus: Python's `pydoc_data.topics` English text.

    Returns:
        A list of 79 documents (one per topic, sorted by topic name).
    """
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


#: Characters per document when a plain text file is cut at line ends (tokens are
#: concatenated into one stream, so the cut changes nothing but batching).
_TEXT_CHUNK = 1 << 16


def _chunk_lines(text):
    """Cuts `text` at line ends into pieces of about `_TEXT_CHUNK` characters, keeping
    every character (line breaks included): `"".join(pieces) == text`."""
    pieces, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        size += len(line)
        if size >= _TEXT_CHUNK:
            pieces.append("".join(current))
            current, size = [], 0
    if current:
        pieces.append("".join(current))
    return pieces


def load_text_file(text_file, one_document_per_line=False):
    """Reads a UTF-8 text file.

    Plain text (the default) keeps every character, line breaks included (the character
    tokenizer then has a newline token); it is returned cut at line ends into pieces,
    whose tokens are concatenated again. With `one_document_per_line=True` every
    non-blank line is a document and line breaks are dropped (e.g. a TinyStories dump).
    """
    path = os.fspath(text_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Received an invalid value for `text_file`: no such file. Received: text_file={path!r}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            if one_document_per_line:
                return [line.rstrip("\r\n") for line in f if line.strip()]
            return _chunk_lines(f.read())
    except UnicodeDecodeError:
        offset, line, byte, reason = _first_invalid_utf8(path)
        raise ValueError(
            "Received an invalid value for `text_file`: the file is not valid UTF-8 text "
            f"(byte 0x{byte:02x} at byte offset {offset}, line {line}: {reason}). "
            "Re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`). "
            f"Received: text_file={path!r}"
        ) from None


def _first_invalid_utf8(path, chunk_size=1 << 20):
    """`(byte offset, 1-based line, byte, reason)` of the first byte that is not UTF-8.

    The decoder's own position is relative to its internal buffer, so the file is
    decoded again here, chunk by chunk, counting bytes and newlines.
    """
    import codecs

    base, lines, pending = 0, 1, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            data = pending + chunk
            try:
                _, consumed = codecs.utf_8_decode(data, "strict", not chunk)
            except UnicodeDecodeError as error:
                return (base + error.start, lines + data.count(b"\n", 0, error.start),
                        data[error.start], error.reason)
            lines += data.count(b"\n", 0, consumed)
            base += consumed
            pending = data[consumed:]
            if not chunk:
                return base, lines, 0, "not found again (the file changed?)"


def check_tfds_name(name):
    """Raises a `ValueError` (without touching the network) for unknown names."""
    import tensorflow_datasets as tfds

    base = name.split("/")[0].split(":")[0].strip()
    builders = sorted(set(tfds.list_builders(with_community_datasets=False)))
    if base not in builders:
        matches = difflib.get_close_matches(base, builders, n=5, cutoff=0.6)
        hint = (
            f" Did you mean: {', '.join(repr(m) for m in matches)}?"
            if matches
            else " See `tfds.list_builders()` for the available names."
        )
        raise ValueError(
            "Received an invalid value for `data`: not a TensorFlow Datasets name."
            f"{hint} Received: data={name!r}"
        )


def load_tfds(name, *, split, data_dir, text_feature, max_documents):
    """Loads a TFDS dataset and picks its text feature.

    The feature is `text_feature` if given, else the first
    `tfds.features.Text` feature of the dataset.
    """
    import tensorflow_datasets as tfds

    check_tfds_name(name)
    if _will_download(tfds.builder(name, data_dir=data_dir)):
        _check_download_reachable(name)
    ds, info = tfds.load(name, split=split, data_dir=data_dir, with_info=True)
    features = info.features
    if text_feature is None and isinstance(features, tfds.features.FeaturesDict):
        text_feature = next(
            (k for k, f in features.items() if isinstance(f, tfds.features.Text)), None
        )
        if text_feature is None:
            raise ValueError(
                f"Received an invalid value for `data`: the TFDS dataset {name!r} has no "
                f"`tfds.features.Text` feature; pass `text_feature`. Available features: "
                f"{sorted(features.keys())}. Received: data={name!r}"
            )
    return dataset_corpus(ds, text_feature=text_feature, max_documents=max_documents)


def _will_download(builder):
    """True when `tfds.load` would download: the data is not prepared locally (and
    `tfds.testing.mock_data`, which replaces the download, is not active)."""
    import tensorflow_datasets as tfds

    prepare = tfds.core.DatasetBuilder.download_and_prepare
    if getattr(prepare, "__module__", "").startswith("tensorflow_datasets.testing"):
        return False
    try:
        return not builder.is_prepared()
    except Exception:  # an unusual builder: let tfds.load decide
        return False


#: Where TFDS downloads prepared data from first (its GCS mirror).
DOWNLOAD_HOST = ("storage.googleapis.com", 443)
DOWNLOAD_PROBE_SECONDS = 10.0


def _check_download_reachable(name):
    """Fails within `DOWNLOAD_PROBE_SECONDS` when a TFDS dataset that is not prepared
    locally cannot be downloaded (TFDS itself retries for minutes)."""
    if not probe(DOWNLOAD_HOST, DOWNLOAD_PROBE_SECONDS):
        raise ValueError(
            f"Received an invalid value for `data`: the TFDS dataset {name!r} is not "
            f"prepared locally and cannot be downloaded (no connection to "
            f"{DOWNLOAD_HOST[0]} within {DOWNLOAD_PROBE_SECONDS:.0f} s). Use a local file "
            "instead (`text_file=...`, `--text-file PATH` on the command line), or prepare "
            f"the dataset on a machine with network access and pass its `data_dir`. "
            f"Received: data={name!r}"
        )


def _is_string(spec):
    return isinstance(spec, tf.TensorSpec) and spec.dtype == tf.string


def _is_integer(spec):
    return isinstance(spec, (tf.TensorSpec, tf.RaggedTensorSpec)) and spec.dtype.is_integer


def dataset_corpus(ds, *, text_feature=None, max_documents=None):
    """Turns a `tf.data.Dataset` of strings, dicts or token ids into a `Corpus`."""
    spec = ds.element_spec
    if isinstance(spec, dict):
        if text_feature is None:
            text_feature = next((k for k, s in spec.items() if _is_string(s)), None)
            if text_feature is None:
                raise ValueError(
                    "Received an invalid value for `text_feature`: the dataset's elements "
                    "have no string feature, pass `text_feature`. Available features: "
                    f"{sorted(spec)}. Received: text_feature=None"
                )
        if text_feature not in spec:
            raise ValueError(
                f"Received an invalid value for `text_feature`: the dataset has no feature "
                f"named {text_feature!r}. Available features: {sorted(spec)}. "
                f"Received: text_feature={text_feature!r}"
            )
        ds = ds.map(lambda e: e[text_feature], num_parallel_calls=tf.data.AUTOTUNE)
        spec = ds.element_spec
    elif text_feature is not None:
        raise ValueError(
            "Received an invalid value for `text_feature`: the dataset's elements are not "
            f"dicts, so there is no feature to choose. Received: text_feature={text_feature!r}"
        )
    if max_documents is not None:
        ds = ds.take(max_documents)
    if _is_string(spec):
        if spec.shape.rank != 0:
            ds = ds.map(lambda s: tf.reshape(s, [-1])).unbatch()
        return Corpus(texts=ds)
    if _is_integer(spec):
        return Corpus(ids=_collect_ids(ds, spec))
    raise ValueError(
        "Received an invalid value for `data`: expected a dataset of strings, of dicts with "
        f"a text feature, or of integer token ids. Received: data with element_spec={spec}"
    )


def _collect_ids(ds, spec):
    rank = spec.shape.rank
    if isinstance(spec, tf.RaggedTensorSpec) or rank is None or rank > 1:
        ds = ds.map(lambda t: tf.reshape(_dense(t), [-1]))
        rank = 1
    if rank == 1:
        ds = ds.unbatch()
    chunks = [np.asarray(c) for c in ds.batch(_ID_CHUNK).as_numpy_iterator()]
    if not chunks:
        return np.zeros((0,), dtype=np.int64)
    return np.concatenate(chunks)


def _dense(t):
    return t.flat_values if isinstance(t, tf.RaggedTensor) else t

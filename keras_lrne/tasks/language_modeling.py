"""Next-token prediction data for evolving language models."""

import json
import numbers
import os
import warnings

import keras
import numpy as np

from keras_lrne._tf import import_tensorflow, is_dataset
from keras_lrne._validation import check_int
from keras_lrne.checkpoint import streaming_digest
from keras_lrne.tasks.base import Task

_TOKENIZERS = ("word", "character")


def _check_text_vocab_size(vocab_size):
    if vocab_size < 3:
        raise ValueError(
            "Received an invalid value for `vocab_size`, expected an integer >= 3 for text "
            "(ids 0 and 1 are padding and out-of-vocabulary). "
            f"Received: vocab_size={vocab_size}"
        )


class LanguageModeling(Task):
    """Language-modelling task: fixed-length next-token prediction windows.

    Turns a text corpus into `(x, y)` pairs of token ids for a causal language
    model, where `y` is `x` shifted left by one token. Every document is
    tokenised, all token ids are concatenated into one stream (no padding) and
    the stream is cut into non-overlapping windows of `sequence_length + 1`
    tokens: `x = window[:-1]`, `y = window[1:]`.

    The final `validation_split` fraction of the windows, in stream order, is
    held out for validation, so no validation text is seen in training. The
    training windows are shuffled with `numpy.random.default_rng(seed)`.

    As in the paper (Garbus & Pollack, 2025: "a fixed sample of 1024 stories
    every generation"), `train_data(generation)` returns by default the same
    fixed sample of `num_sequences` windows in every generation; with
    `fresh_batch=True` it draws a new, seed-determined sample each generation.

    Tokenisation uses Keras' own `keras.layers.TextVectorization`, adapted to
    the corpus. Id 0 is padding (never produced in a window) and id 1 is the
    out-of-vocabulary token.

    - `tokenizer="word"`: lower-cases the text (`standardize="lower"`) and
      splits it on whitespace, keeping ASCII punctuation marks as tokens of
      their own (`"Hello, world."` -> `hello , world .`). The `vocab_size - 2` most frequent tokens
      form the vocabulary.
    - `tokenizer="character"`: one token per character, case and whitespace
      kept (`standardize=None`).

    Args:
        data: The corpus. `None` (default) uses the embedded offline corpus:
            the English text of Python's `pydoc_data.topics` (79 documents,
            about 465,000 characters). A `str` is a TensorFlow Datasets name
            (e.g. `"tiny_shakespeare"`, `"lm1b"`, `"imdb_reviews"`), loaded
            with `tfds.load(data, split=split, data_dir=data_dir)`; unknown
            names are rejected before any download. A `tf.data.Dataset` of
            scalar strings, of dicts with a string feature, or of integer
            token ids (scalars or 1-D sequences; then no tokenizer is used
            and `vocab_size` must exceed the largest id). A list or tuple of
            Python strings is taken as documents.
        text_file: Path to a local UTF-8 text file. Its text is read as it is,
            line breaks included (the character tokenizer gets a newline token;
            the word tokenizer treats line breaks as spaces), unless
            `one_document_per_line=True`. Give either `data` or `text_file`.
        one_document_per_line: Only with `text_file`: if `True`, every
            non-blank line is one document and line breaks are dropped (e.g. a
            TinyStories dump with one story per line; `max_documents` then
            counts lines).
        tokenizer: `"word"`, `"character"` or a `keras.layers.TextVectorization`
            with `output_mode="int"` (adapted to the corpus here if it has no
            vocabulary yet). Ignored for token-id datasets.
        vocab_size: Maximum vocabulary size, padding and OOV included (at
            least 3 for text). For token-id datasets, the exact number of ids.
        sequence_length: Number of input tokens per sequence.
        num_sequences: Number of sequences returned by `train_data()`.
        fresh_batch: If `False`, `train_data()` returns the same fixed sample
            every generation; if `True`, a new sample per generation.
        validation_split: Fraction of the windows, in `[0, 1)`, held out at
            the end of the token stream for `validation_data()`.
        num_validation_sequences: Maximum number of validation sequences;
            defaults to `num_sequences`.
        text_feature: Name of the text feature for dict datasets and TFDS
            datasets; defaults to the first string / `tfds.features.Text`
            feature.
        split: TFDS split to load when `data` is a name.
        max_documents: Keep only the first `max_documents` documents (the
            paper used the first 1024 TinyStories stories). `None` keeps all. A
            plain text file is one document: use `one_document_per_line=True`.
        seed: Seed for shuffling and for fresh batches.
        data_dir: TFDS data directory when `data` is a name.

    Example:

    >>> task = LanguageModeling(sequence_length=64, num_sequences=32)
    >>> x, y = task.train_data(generation=0)
    >>> x.shape, x.dtype.name
    ((32, 64), 'int32')
    >>> bool((x[:, 1:] == y[:, :-1]).all())
    True
    """

    def __init__(
        self,
        data=None,
        *,
        text_file=None,
        one_document_per_line=False,
        tokenizer="word",
        vocab_size=2048,
        sequence_length=128,
        num_sequences=1024,
        fresh_batch=False,
        validation_split=0.1,
        num_validation_sequences=None,
        text_feature=None,
        split="train",
        max_documents=None,
        seed=0,
        data_dir=None,
    ):
        self._validate_args(
            data=data,
            text_file=text_file,
            one_document_per_line=one_document_per_line,
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            sequence_length=sequence_length,
            num_sequences=num_sequences,
            fresh_batch=fresh_batch,
            validation_split=validation_split,
            num_validation_sequences=num_validation_sequences,
            text_feature=text_feature,
            max_documents=max_documents,
            seed=seed,
        )
        self.data = data
        self.text_file = text_file
        self.one_document_per_line = bool(one_document_per_line)
        self.tokenizer = tokenizer
        self.requested_vocab_size = int(vocab_size)
        self.sequence_length = int(sequence_length)
        self.tokens_per_sample = self.sequence_length
        self.requested_num_sequences = int(num_sequences)
        self.fresh_batch = bool(fresh_batch)
        self.validation_split = float(validation_split)
        self.num_validation_sequences = num_validation_sequences
        self.text_feature = text_feature
        self.split = split
        self.max_documents = max_documents
        self.seed = int(seed)
        self.data_dir = data_dir

        # TensorFlow (tf.data, TextVectorization, TFDS) only from here: a text task needs
        # it on every backend; `import keras_lrne` does not.
        from keras_lrne.tasks import _text

        corpus = self._load_corpus()
        if corpus.ids is not None:
            self._vectorizer = None
            stream = self._check_ids(corpus.ids)
        else:
            self._vectorizer = self._make_vectorizer(corpus.texts)
            stream = _text.tokenize(self._vectorizer, corpus.texts)
        if stream.size == 0:
            raise self._no_tokens_error()
        self.num_tokens = int(stream.size)
        self._stream_digest = streaming_digest(stream)
        self._make_windows(stream)

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _validate_args(
        *,
        data,
        text_file,
        one_document_per_line,
        tokenizer,
        vocab_size,
        sequence_length,
        num_sequences,
        fresh_batch,
        validation_split,
        num_validation_sequences,
        text_feature,
        max_documents,
        seed,
    ):
        if data is not None and text_file is not None:
            raise ValueError(
                "Received both `data` and `text_file`; give only one of them. "
                f"Received: data={data!r}, text_file={text_file!r}"
            )
        if text_file is not None and not isinstance(text_file, (str, os.PathLike)):
            raise ValueError(
                "Received an invalid value for `text_file`, expected a path (str or "
                f"os.PathLike). Received: text_file={text_file!r}"
            )
        if not isinstance(one_document_per_line, (bool, np.bool_)):
            raise ValueError(
                "Received an invalid value for `one_document_per_line`, expected a boolean. "
                f"Received: one_document_per_line={one_document_per_line!r}"
            )
        if one_document_per_line and text_file is None:
            raise ValueError(
                "`one_document_per_line=True` applies to `text_file` only; no `text_file` "
                f"was given. Received: one_document_per_line={one_document_per_line!r}, "
                f"data={data!r:.100}"
            )
        if text_file is not None and max_documents is not None and not one_document_per_line:
            raise ValueError(
                "Received `max_documents` with a plain `text_file`, which is one document. "
                "Pass `one_document_per_line=True` (`--one-document-per-line`) to count "
                f"lines as documents. Received: max_documents={max_documents!r}, "
                f"text_file={text_file!r}"
            )
        if data is not None and not (isinstance(data, (str, list, tuple)) or is_dataset(data)):
            raise ValueError(
                "Received an invalid value for `data`, expected None, a TFDS name, a "
                "`tf.data.Dataset` or a list of strings. "
                f"Received: data={data!r}"
            )
        if isinstance(data, (list, tuple)) and not all(isinstance(d, str) for d in data):
            raise ValueError(
                "Received an invalid value for `data`, expected a list of strings "
                f"(documents). Received: data={data!r:.200}"
            )
        if isinstance(tokenizer, str):
            if tokenizer not in _TOKENIZERS:
                raise ValueError(
                    "Received an invalid value for `tokenizer`, expected one of "
                    '"word", "character" or a `keras.layers.TextVectorization`. '
                    f"Received: tokenizer={tokenizer!r}"
                )
        elif isinstance(tokenizer, keras.layers.TextVectorization):
            if tokenizer.get_config().get("output_mode") != "int":
                raise ValueError(
                    "Received an invalid value for `tokenizer`: a `TextVectorization` "
                    'tokenizer needs `output_mode="int"`. '
                    f"Received: tokenizer={tokenizer!r} with "
                    f"output_mode={tokenizer.get_config().get('output_mode')!r}"
                )
        else:
            # Keras raises `ValueError` for every invalid argument value.
            raise ValueError(
                "Received an invalid value for `tokenizer`, expected one of "
                '"word", "character" or a `keras.layers.TextVectorization`. '
                f"Received: tokenizer={tokenizer!r}"
            )
        check_int("vocab_size", vocab_size)
        if isinstance(tokenizer, str) and not is_dataset(data):
            # Text for sure (datasets may hold token ids: checked once loaded).
            _check_text_vocab_size(vocab_size)
        check_int("sequence_length", sequence_length)
        check_int("num_sequences", num_sequences)
        if num_validation_sequences is not None:
            check_int("num_validation_sequences", num_validation_sequences)
        if max_documents is not None:
            check_int("max_documents", max_documents)
        if not isinstance(fresh_batch, (bool, np.bool_)):
            raise ValueError(
                "Received an invalid value for `fresh_batch`, expected a boolean. "
                f"Received: fresh_batch={fresh_batch!r}"
            )
        if (
            not isinstance(validation_split, numbers.Real)
            or isinstance(validation_split, bool)
            or not 0 <= validation_split < 1
        ):
            raise ValueError(
                "Received an invalid value for `validation_split`, expected a number in "
                f"[0, 1). Received: validation_split={validation_split!r}"
            )
        if text_feature is not None and not isinstance(text_feature, str):
            raise ValueError(
                "Received an invalid value for `text_feature`, expected a feature name "
                f"(str). Received: text_feature={text_feature!r}"
            )
        check_int("seed", seed, minimum=0)

    def _load_corpus(self):
        tf = import_tensorflow("LanguageModeling")
        from keras_lrne.tasks import corpus as corpus_lib

        data = self.data
        if self.text_file is not None:
            docs = corpus_lib.load_text_file(self.text_file, self.one_document_per_line)
        elif data is None:
            docs = corpus_lib.load_default_corpus()
        elif isinstance(data, str):
            return corpus_lib.load_tfds(
                data,
                split=self.split,
                data_dir=self.data_dir,
                text_feature=self.text_feature,
                max_documents=self.max_documents,
            )
        elif is_dataset(data):
            return corpus_lib.dataset_corpus(
                data, text_feature=self.text_feature, max_documents=self.max_documents
            )
        else:
            docs = list(data)
        if self.max_documents is not None:
            docs = docs[: self.max_documents]
        return corpus_lib.Corpus(
            texts=tf.data.Dataset.from_tensor_slices(tf.constant(docs, tf.string))
        )

    def _make_vectorizer(self, texts):
        from keras_lrne.tasks import _text

        if isinstance(self.tokenizer, keras.layers.TextVectorization):
            vectorizer = self.tokenizer
            if _text.is_adapted(vectorizer):
                return vectorizer
        else:
            _check_text_vocab_size(self.requested_vocab_size)
            vectorizer = _text.make_vectorizer(self.tokenizer, self.requested_vocab_size)
        vectorizer.adapt(texts.batch(_text.BATCH_SIZE))
        if not _text.is_adapted(vectorizer):
            # No token at all (e.g. only empty or blank documents): tokenising would fail
            # with TensorFlow's "Table not initialized".
            raise self._no_tokens_error()
        return vectorizer

    def _no_tokens_error(self):
        name = "data" if self.text_file is None else "text_file"
        received = self._describe_data() if self.text_file is not None else (
            f"data={self._describe_data()}")
        return ValueError(
            f"Received an invalid value for `{name}`: the dataset is empty (it produced no "
            "tokens: no documents, or only empty or blank ones). "
            f"Received: {received}"
        )

    def _check_ids(self, ids):
        if ids.size == 0:
            return ids.astype(np.int32)
        low, high = int(ids.min()), int(ids.max())
        if low < 0:
            raise ValueError(
                "Received an invalid value for `data`: token ids must be non-negative. "
                f"Received: data with smallest id {low}"
            )
        if self.requested_vocab_size < high + 1:
            raise ValueError(
                "Received an invalid value for `vocab_size`, expected at least the largest "
                f"token id + 1 = {high + 1}. Received: vocab_size={self.requested_vocab_size}"
            )
        return ids.astype(np.int32)

    def _make_windows(self, stream):
        width = self.sequence_length + 1
        num_windows = stream.size // width
        num_val = 0
        if self.validation_split > 0:
            num_val = max(1, int(num_windows * self.validation_split))
        num_train = num_windows - num_val
        if num_train < 1:
            raise ValueError(
                f"Received an invalid value for `sequence_length`: the corpus has only "
                f"{stream.size} tokens, {num_windows} window(s) of sequence_length + 1 = "
                f"{width} tokens, which leaves no training sequence with "
                f"validation_split={self.validation_split}. Use a shorter "
                f"`sequence_length` or more data. Received: "
                f"sequence_length={self.sequence_length}"
            )
        windows = stream[: num_windows * width].reshape(num_windows, width)
        # Token counts of the training windows, for the unigram baseline.
        self._train_counts = np.bincount(windows[:num_train].reshape(-1),
                                         minlength=self.vocab_size)
        rng = np.random.default_rng(self.seed)
        train = windows[:num_train][rng.permutation(num_train)]
        self._train_x = np.ascontiguousarray(train[:, :-1])
        self._train_y = np.ascontiguousarray(train[:, 1:])

        if num_train < self.requested_num_sequences:
            warnings.warn(
                f"The corpus has only {num_train} training sequences of "
                f"sequence_length={self.sequence_length}, fewer than "
                f"num_sequences={self.requested_num_sequences}; using all {num_train}.",
                stacklevel=3,
            )
        self._num_sequences = min(num_train, self.requested_num_sequences)
        fixed = slice(0, self._num_sequences)
        self._fixed = (self._train_x[fixed], self._train_y[fixed])
        for array in self._fixed:
            array.flags.writeable = False

        self._validation = None
        if num_val:
            limit = self.num_validation_sequences or self.requested_num_sequences
            val = windows[num_train:][rng.permutation(num_val)][:limit]
            self._validation = (
                np.ascontiguousarray(val[:, :-1]),
                np.ascontiguousarray(val[:, 1:]),
            )
            for array in self._validation:
                array.flags.writeable = False

    def _describe_data(self):
        if self.text_file is not None:
            return f"text_file={os.fspath(self.text_file)!r}"
        if self.data is None or isinstance(self.data, str):
            return repr(self.data)
        if is_dataset(self.data):
            return f"<tf.data.Dataset element_spec={self.data.element_spec}>"
        return f"<{type(self.data).__name__} of {len(self.data)} documents>"

    # ----------------------------------------------------------------- public

    @property
    def vectorizer(self):
        """The adapted `keras.layers.TextVectorization`, or `None` for token ids."""
        return self._vectorizer

    @property
    def vocabulary(self):
        """The vocabulary as a list (index = token id), or `None` for token ids."""
        if self._vectorizer is None:
            return None
        return [str(token) for token in self._vectorizer.get_vocabulary()]

    @property
    def vocab_size(self):
        """The actual number of token ids: the model's output size."""
        if self._vectorizer is None:
            return self.requested_vocab_size
        return int(self._vectorizer.vocabulary_size())

    @property
    def num_sequences(self):
        """The number of sequences `train_data()` returns per generation."""
        return self._num_sequences

    @property
    def num_train_windows(self):
        """The number of training windows available to sample from."""
        return int(self._train_x.shape[0])

    def train_data(self, generation=0):
        """The fitness data for one generation.

        Args:
            generation: The generation index (non-negative integer). Only used
                when `fresh_batch=True`.

        Returns:
            A tuple `(x, y)` of read-only numpy int32 arrays of shape
            `(num_sequences, sequence_length)`, with `y` the next tokens of `x`.
        """
        check_int("generation", generation, minimum=0)
        if not self.fresh_batch:
            return self._fixed
        rng = np.random.default_rng([self.seed, int(generation)])
        index = rng.choice(self.num_train_windows, size=self._num_sequences, replace=False)
        return self._train_x[index], self._train_y[index]

    @property
    def uniform_loss(self):
        """The cross-entropy of guessing uniformly over the vocabulary: `ln(vocab_size)`.

        A model whose loss is above it does worse than knowing nothing.
        """
        return float(np.log(self.vocab_size))

    @property
    def unigram_loss(self):
        """The cross-entropy of a unigram model of the training tokens, in nats.

        Token frequencies are counted over the training windows (add-one smoothed over
        the vocabulary) and scored on the validation targets (the training targets when
        `validation_split=0`). A language model should end below it: it is what
        predicting each token's frequency, ignoring context, reaches.
        """
        counts = self._train_counts.astype(np.float64) + 1.0
        log_p = np.log(counts / counts.sum())
        targets = (self._validation or self._fixed)[1]
        return float(-log_p[np.asarray(targets).reshape(-1)].mean())

    def baselines(self):
        """The reference losses an evolved language model is judged against.

        Returns:
            `{"uniform_loss": ln(vocab_size), "unigram_loss": ...}` (see `uniform_loss`
            and `unigram_loss`), in nats per token.
        """
        return {"uniform_loss": self.uniform_loss, "unigram_loss": self.unigram_loss}

    def validation_data(self):
        """The held-out validation sequences.

        Returns:
            A tuple `(x, y)` of read-only numpy int32 arrays of shape
            `(n, sequence_length)` with `n <= num_validation_sequences` (default
            `num_sequences`), or `None` when `validation_split=0`.
        """
        return self._validation

    def decode(self, ids):
        """Turns token ids back into text.

        Padding ids (0) are skipped. Word tokens are joined with spaces,
        characters with nothing; token-id datasets (no vocabulary) give the
        ids joined with spaces.

        Args:
            ids: A sequence of token ids (list, numpy array or tensor).

        Returns:
            A `str`.
        """
        ids = np.asarray(keras.ops.convert_to_numpy(ids)).reshape(-1)
        ids = [int(i) for i in ids if i != 0]
        if self._vectorizer is None:
            return " ".join(str(i) for i in ids)
        vocab = self._vocabulary_cache()
        tokens = [vocab[i] if 0 <= i < len(vocab) else vocab[1] for i in ids]
        sep = "" if self._vectorizer.get_config().get("split") == "character" else " "
        return sep.join(tokens)

    def _vocabulary_cache(self):
        if getattr(self, "_vocab", None) is None:
            self._vocab = self.vocabulary
        return self._vocab

    def get_config(self):
        """The JSON-serialisable constructor arguments (for logs).

        A dataset or list given as `data`, or a `TextVectorization` given as
        `tokenizer`, is not serialisable and is left out.
        """
        config = {}
        if self.data is None or isinstance(self.data, str):
            config["data"] = self.data
        if self.text_file is not None:
            config["text_file"] = os.fspath(self.text_file)
            config["one_document_per_line"] = self.one_document_per_line
        if isinstance(self.tokenizer, str):
            config["tokenizer"] = self.tokenizer
        config.update(
            vocab_size=self.requested_vocab_size,
            sequence_length=self.sequence_length,
            num_sequences=self.requested_num_sequences,
            fresh_batch=self.fresh_batch,
            validation_split=self.validation_split,
            num_validation_sequences=self.num_validation_sequences,
            text_feature=self.text_feature,
            split=self.split if isinstance(self.split, str) else str(self.split),
            max_documents=self.max_documents,
            seed=self.seed,
            data_dir=None if self.data_dir is None else os.fspath(self.data_dir),
        )
        return config

    def fingerprint(self):
        """`get_config()` plus SHA-256 digests of the whole token stream (every document
        or the file's contents, as tokenised) and of the vocabulary."""
        vocabulary = self.vocabulary
        return {
            "class": type(self).__name__,
            "config": json.loads(json.dumps(self.get_config(), default=str)),
            "tokens": self._stream_digest,
            "vocabulary": None if vocabulary is None else streaming_digest(
                np.asarray(vocabulary, dtype=object)),
        }

    def __repr__(self):
        tokenizer = (
            self.tokenizer if isinstance(self.tokenizer, str) else type(self.tokenizer).__name__
        )
        if self._vectorizer is None:
            tokenizer = None
        val = 0 if self._validation is None else self._validation[0].shape[0]
        return (
            f"LanguageModeling(data={self._describe_data()}, tokenizer={tokenizer!r}, "
            f"vocab_size={self.vocab_size}, sequence_length={self.sequence_length}, "
            f"num_sequences={self.num_sequences}, fresh_batch={self.fresh_batch}, "
            f"num_tokens={self.num_tokens}, train_windows={self.num_train_windows}, "
            f"validation_sequences={val}, seed={self.seed})"
        )

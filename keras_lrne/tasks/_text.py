"""Private tokenisation helpers built on `keras.layers.TextVectorization`."""

import keras
import numpy as np

from keras_lrne._tf import import_tensorflow

tf = import_tensorflow("LanguageModeling")

BATCH_SIZE = 256
# ASCII punctuation, written out for RE2 (`tf.strings.regex_replace`).
_PUNCTUATION = r"""([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])"""


@keras.saving.register_keras_serializable(package="keras_lrne")
def split_words_and_punctuation(text):
    """Splits `text` on whitespace, keeping ASCII punctuation marks as tokens.

    Used as the `split` of the `"word"` tokenizer (after `standardize="lower"`)
    so that punctuation marks become tokens of their own, as in a BPE
    vocabulary, instead of being stripped or glued to words:
    `"hello, world."` -> `["hello", ",", "world", "."]`. It is a `split`
    rather than a `standardize` callable because Keras hands `split` callables
    `tf` tensors on every backend, so it also runs inside `tf.data` under JAX.
    """
    text = tf.strings.regex_replace(text, _PUNCTUATION, r" \1 ")
    return tf.strings.split(text)


def make_vectorizer(tokenizer, vocab_size):
    """A fresh, un-adapted `TextVectorization` for `"word"` or `"character"`."""
    if tokenizer == "word":
        return keras.layers.TextVectorization(
            max_tokens=vocab_size,
            standardize="lower",
            split=split_words_and_punctuation,
            output_mode="int",
            name="word_vectorizer",
        )
    return keras.layers.TextVectorization(
        max_tokens=vocab_size,
        standardize=None,
        split="character",
        output_mode="int",
        name="character_vectorizer",
    )


def tokenize(vectorizer, texts):
    """Tokenises a dataset of scalar strings into one int32 stream of ids.

    Documents are concatenated in order; padding (id 0) added by
    `TextVectorization` to rectangular batches is dropped.
    """

    def encode(batch):
        ids = vectorizer(batch)
        if isinstance(ids, tf.RaggedTensor):
            ids = ids.flat_values
        ids = tf.reshape(tf.cast(ids, tf.int32), [-1])
        return tf.boolean_mask(ids, ids > 0)

    chunks = list(
        texts.batch(BATCH_SIZE)
        .map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .as_numpy_iterator()
    )
    if not chunks:
        return np.zeros((0,), dtype=np.int32)
    return np.concatenate(chunks).astype(np.int32, copy=False)


def is_adapted(vectorizer):
    """Whether a `TextVectorization` has a vocabulary beyond padding and OOV."""
    try:
        return vectorizer.vocabulary_size() > 2
    except Exception:
        return False

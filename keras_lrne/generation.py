"""Sampling text from an evolved language model (`keras-lrne generate`)."""

import json
import os

import keras
import numpy as np

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_KINDS = ("word", "character")


def save_tokenizer(task, filepath):
    """Writes a `LanguageModeling` task's tokenizer (kind and vocabulary) as JSON.

    `keras-lrne lm` writes it as `OUTPUT/tokenizer.json`, next to `model.keras`, so that
    `keras-lrne generate OUTPUT --prompt TEXT` can tokenise prompts and decode samples.

    Args:
        task: a `keras_lrne.tasks.LanguageModeling` built from text (not token ids).
        filepath: the JSON file to write.

    Returns:
        `filepath`.
    """
    vectorizer = task.vectorizer
    if vectorizer is None:
        raise ValueError(
            "The task was built from token ids and has no vocabulary to save. Received: "
            f"task={task!r}"
        )
    kind = "character" if vectorizer.get_config().get("split") == "character" else "word"
    with open(filepath, "w", encoding="utf-8") as f:
        json.dump({"format": "keras_lrne_tokenizer", "tokenizer": kind,
                   "vocabulary": task.vocabulary,
                   "sequence_length": int(task.sequence_length)}, f, ensure_ascii=False)
    return filepath


def load_tokenizer(filepath):
    """Reads a file written by `save_tokenizer`: returns `(kind, vocabulary)`."""
    if not os.path.isfile(filepath):
        raise ValueError(
            f"No tokenizer found: {filepath!r} does not exist. `keras-lrne generate` needs "
            f"the output directory of a `keras-lrne lm` run (it holds model.keras and "
            f"{TOKENIZER_FILE})."
        )
    with open(filepath, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{filepath!r} is not a keras-lrne tokenizer ({error}).") from None
    if data.get("format") != "keras_lrne_tokenizer" or data.get("tokenizer") not in (
        TOKENIZER_KINDS
    ):
        raise ValueError(
            f"{filepath!r} is not a keras-lrne tokenizer (format={data.get('format')!r}, "
            f"tokenizer={data.get('tokenizer')!r})."
        )
    return data["tokenizer"], list(data["vocabulary"])


def generate_text(model, prompt, vocabulary, *, tokenizer="word", max_tokens=50,
                  temperature=1.0, top_k=None, seed=0):
    """Samples a continuation of `prompt` from a causal language model.

    The model must map `(batch, sequence_length)` token ids to next-token logits at
    every position (as `keras_lrne.presets.language_model` does). The prompt is tokenised
    with the training vocabulary; each new token is sampled from the logits at the last
    position of the most recent `sequence_length` tokens. Padding (id 0) and the
    out-of-vocabulary token (id 1) are never sampled.

    Args:
        model: the evolved language model.
        prompt: the text to continue (at least one token).
        vocabulary: the training vocabulary, index = token id (`task.vocabulary`).
        tokenizer: `"word"` or `"character"`, as in training.
        max_tokens: tokens to generate.
        temperature: softmax temperature; 0 means greedy (argmax).
        top_k: sample only among the `top_k` most likely tokens (None: all).
        seed: sampling seed.

    Returns:
        The continuation as a `str` (without the prompt).

    Example:

    >>> kind, vocab = keras_lrne.generation.load_tokenizer("lrne_output/lm/tokenizer.json")
    >>> model = keras.saving.load_model("lrne_output/lm/model.keras")
    >>> keras_lrne.generation.generate_text(model, "the list", vocab, tokenizer=kind)
    """
    from keras_lrne._validation import check_int
    from keras_lrne.tasks import _text

    if tokenizer not in TOKENIZER_KINDS:
        raise ValueError(
            f"Received an invalid value for `tokenizer`, expected one of {TOKENIZER_KINDS}. "
            f"Received: tokenizer={tokenizer!r}"
        )
    check_int("max_tokens", max_tokens)
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(
            "Received an invalid value for `temperature`, expected a number >= 0. "
            f"Received: temperature={temperature!r}"
        )
    check_int("top_k", top_k, allow_none=True)
    vocabulary = list(vocabulary)
    vectorizer = _text.make_vectorizer(tokenizer, len(vocabulary))
    vectorizer.set_vocabulary(vocabulary[2:])  # ids 0 and 1 are padding and OOV
    ids = np.asarray(keras.ops.convert_to_numpy(vectorizer([prompt]))).reshape(-1)
    ids = [int(i) for i in ids if i != 0]
    if not ids:
        raise ValueError(
            "Received an invalid value for `prompt`, expected text with at least one token. "
            f"Received: prompt={prompt!r}"
        )
    length = model.inputs[0].shape[1] if getattr(model, "inputs", None) else None
    length = int(length or len(ids) + max_tokens)
    rng = np.random.default_rng(seed)
    generated = []
    for _ in range(int(max_tokens)):
        context = (ids + generated)[-length:]
        window = np.zeros((1, length), np.int32)
        window[0, : len(context)] = context
        logits = keras.ops.convert_to_numpy(model(window, training=False))
        logits = np.asarray(logits[0, len(context) - 1], np.float64)[: len(vocabulary)]
        logits[:2] = -np.inf
        generated.append(_sample(logits, temperature, top_k, rng))
    sep = "" if tokenizer == "character" else " "
    return sep.join(vocabulary[i] for i in generated)


def _sample(logits, temperature, top_k, rng):
    if top_k is not None and top_k < np.isfinite(logits).sum():
        cutoff = np.sort(logits)[-top_k]
        logits = np.where(logits >= cutoff, logits, -np.inf)
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = (logits - np.max(logits)) / temperature
    probs = np.exp(scaled)
    probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))

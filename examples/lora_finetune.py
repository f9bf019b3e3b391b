"""Fine-tune a pretrained model by evolving its LoRA adapters on exact match: addition.

The task is multi-digit addition written as text, `"123+456=0579"` (operands of
`--digits` digits, the sum zero-padded to `digits + 1`), one character per token. Every
problem is generated offline: all `10 ** (2 * digits)` operand pairs, split once by a
fixed data seed (`DATA_SEED`, the same for every run seed) into a held-out set
(`HELDOUT_PROBLEMS`), a dev set (for choosing settings; never used here) and the
training set. No held-out problem is ever trained on or scored during evolution.

1. **Pretraining, by gradients.** The "full" LM preset is trained with `fit()` (Adam) for
   `--pretrain-steps` batches of training problems, drawn from the run seed, on the
   cross-entropy of the answer digits. A step count, not a time budget, so the pretrained
   model is a function of the seed.
2. **Evolution.** `enable_lora(rank)` on every `Dense` and `EinsumDense` layer, and
   `keras_lrne.evolve` evolves only the adapters with `OpenES` on the exact-match rate of
   the answer: 1 when every answer digit is right, 0 otherwise, a reward with no
   gradient. It is a compiled `Fitness`: one teacher-forced forward, `argmax` at every
   answer position. On a causal model this is the exact-match rate of greedy decoding,
   not a proxy: greedy decoding writes the right answer exactly when every answer
   digit's argmax, given the right digits before it, is right (the script checks this
   by decoding the held-out set autoregressively). Each generation scores the whole
   population on `--fitness-problems` new training problems.
3. **The baselines: `fit()` continued.** From the same pretrained weights and Adam
   state, `fit()` continues on the cross-entropy for as much wall time as the evolution
   took (its compilation included), on the same stream of new training problems: once at
   pretraining's learning rate (`--learning-rate`), once at a tenth of it
   (`--low-learning-rate`, not tuned), as one would fine-tune.

It prints the held-out exact match of the pretrained, the evolved and the two
fit()-continued models and ends with one JSON line of results. With `--output DIR` it
writes `pretrain.csv`, `evolution.csv`, `fit_continued.csv` and
`fit_low_lr_continued.csv` (Keras `CSVLogger`: per generation, the population's exact
match on its training problems and `val_fitness`, the held-out exact match; per epoch of
`--epoch-steps` batches for the fits, `val_exact_match`) and `results.json`. About 12-18
minutes per seed on a shared 2-core CPU with the defaults.

    python examples/lora_finetune.py --seed 0 --output runs/lora_finetune/seed_0

Paired over seeds by `docs/results/lora_finetune/report.py`; the study is in
`docs/low_rank.md`. (`keras-lrne lm --lora` is the command-line form of the same
adapters on another reward: next-token accuracy on the embedded corpus.)
"""

import argparse
import json
import os
import time

import keras
import numpy as np

import keras_lrne
from keras_lrne.commands.fit_baseline import deadline_callback
from keras_lrne.commands.lora import enable_lora, evolvable_count
from keras_lrne.tasks import Fitness

#: The characters of a problem; a token is its index here.
VOCABULARY = "0123456789+="
#: Seeds the split of the problems into held-out, dev and training sets (every run seed).
DATA_SEED = 38
#: Problems held out for the results (at most a fifth of all problems), then for dev.
HELDOUT_PROBLEMS = 2000


def split_problems(digits):
    """Every operand pair `(a, b)` of `digits`-digit numbers, as ids `a * 10**digits + b`,
    split by `DATA_SEED`: `(train, dev, heldout)`, disjoint, in a fixed order."""
    total = 10 ** (2 * digits)
    size = min(HELDOUT_PROBLEMS, total // 5)
    order = np.random.default_rng(DATA_SEED).permutation(total)
    return order[2 * size:], order[size:2 * size], order[:size]


def encode(ids, digits):
    """Token arrays of problems: `x` is `"a+b=c"` without its last token and `y` is the
    next token at every position, `(len(ids), 3 * digits + 2)` int32 each."""
    ids = np.asarray(ids, dtype=np.int64)
    a, b = ids // 10 ** digits, ids % 10 ** digits
    columns = []
    for number, width in ((a, digits), (None, "+"), (b, digits), (None, "="),
                          (a + b, digits + 1)):
        if number is None:
            columns.append(np.full((len(ids), 1), VOCABULARY.index(width)))
            continue
        powers = 10 ** np.arange(width - 1, -1, -1)
        columns.append((number[:, None] // powers) % 10)  # digit tokens are the digits
    tokens = np.concatenate(columns, axis=1).astype("int32")
    return tokens[:, :-1], tokens[:, 1:]


def answer_start(digits):
    """The first position of `y` that is an answer digit (the one after `=`)."""
    return 2 * digits + 1


def exact_match(logits, labels):
    """The fraction of problems whose answer digits are all the argmax: the reward.

    A compiled fitness (traced for the whole population, so `keras.ops` only). The answer
    is the last `digits + 1` positions; `labels` are the next tokens, `(batch, length)`.
    """
    width = (labels.shape[-1] + 1) // 3  # length = 3 * digits + 2 = 3 * (digits + 1) - 1
    predicted = keras.ops.cast(keras.ops.argmax(logits[:, -width:], axis=-1), "int32")
    right = keras.ops.all(keras.ops.equal(predicted, keras.ops.cast(labels[:, -width:],
                                                                    "int32")), axis=-1)
    return keras.ops.mean(keras.ops.cast(right, "float32"))


def answer_cross_entropy(labels, logits):
    """The mean cross-entropy of the answer digits (the loss `fit()` minimises)."""
    width = (labels.shape[-1] + 1) // 3
    return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
        labels[:, -width:], logits[:, -width:], from_logits=True), axis=-1)


def exact_match_metric(labels, logits):
    """Per problem, 1.0 if every answer digit is the argmax: `fit()`'s `exact_match`."""
    width = (labels.shape[-1] + 1) // 3
    predicted = keras.ops.cast(keras.ops.argmax(logits[:, -width:], axis=-1), "int32")
    right = keras.ops.all(keras.ops.equal(predicted, keras.ops.cast(labels[:, -width:],
                                                                    "int32")), axis=-1)
    return keras.ops.cast(right, "float32")


def scores(model, x, y, digits, batch_size=500):
    """Held-out numbers of `model`: teacher-forced `exact_match` (the reward's), the
    exact match of true autoregressive greedy decoding, digit accuracy and answer
    cross-entropy (nats per digit)."""
    start = answer_start(digits)
    forced, greedy, digit, nll = [], [], [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        logits = keras.ops.convert_to_numpy(model(xb, training=False)).astype("float64")
        predicted = logits[:, start:].argmax(-1)
        forced.append(np.all(predicted == yb[:, start:], axis=1))
        digit.append(predicted == yb[:, start:])
        shifted = logits[:, start:] - logits[:, start:].max(-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        nll.append(-np.take_along_axis(log_p, yb[:, start:, None], -1)[..., 0])
        # Greedy decoding: the prompt up to "=", then each answer digit from the model's
        # own previous digits (positions after the current one cannot change its logits).
        sequence = np.array(xb)
        sequence[:, start + 1:] = 0
        decoded = []
        for position in range(start, x.shape[1]):
            step = keras.ops.convert_to_numpy(model(sequence, training=False))
            token = step[:, position].argmax(-1)
            decoded.append(token)
            if position + 1 < x.shape[1]:
                sequence[:, position + 1] = token
        greedy.append(np.all(np.stack(decoded, 1) == yb[:, start:], axis=1))
    return {"exact_match": float(np.concatenate(forced).mean()),
            "greedy_exact_match": float(np.concatenate(greedy).mean()),
            "digit_accuracy": float(np.concatenate(digit).mean()),
            "answer_loss": float(np.concatenate(nll).mean())}


def problem_batches(train, digits, batch_size, seed, stream):
    """Endless `(x, y)` batches of training problems, drawn from `(seed, stream)`."""
    rng = np.random.default_rng([seed, stream])
    while True:
        yield encode(rng.choice(train, batch_size), digits)


class FreshProblems(Fitness):
    """`Fitness(exact_match)` on `problems` new training problems every generation,
    drawn from the run seed and the generation (the same for every member)."""

    def __init__(self, train, digits, problems, seed):
        self.train, self.digits, self.problems, self.seed = train, digits, problems, seed
        super().__init__(exact_match, data=self._draw(0))

    def _draw(self, generation):
        rng = np.random.default_rng([self.seed, 2, generation])
        return encode(rng.choice(self.train, self.problems, replace=False), self.digits)

    def train_data(self, generation):
        return self._draw(generation)

    def get_config(self):
        return {**super().get_config(), "problems": self.problems, "fresh_each_generation": True}


def build_model(digits, seed):
    keras.utils.set_random_seed(seed)
    return keras_lrne.presets.language_model("full", vocab_size=len(VOCABULARY),
                                             sequence_length=3 * digits + 2)


def compile_for_fit(model, learning_rate):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=answer_cross_entropy,
                  metrics=[keras.metrics.MeanMetricWrapper(exact_match_metric,
                                                           name="exact_match")])


def csv_logger(output, name):
    return [] if output is None else [keras.callbacks.CSVLogger(os.path.join(output, name))]


def _range(values):
    return {"mean": float(np.mean(values)), "min": float(np.min(values)),
            "max": float(np.max(values))}


def continue_fit(model, train, heldout, seconds, args, log_name):
    """Continues `fit()` for `seconds` of wall time (checked after every batch) on the
    stream of training problems `(args.seed, 1)`; returns its steps, seconds, held-out
    `scores` and the range of its per-epoch held-out exact match."""
    stop = deadline_callback()
    begin = time.perf_counter()
    stop.deadline = begin + seconds
    history = model.fit(
        problem_batches(train, args.digits, args.batch_size, args.seed, 1),
        steps_per_epoch=args.epoch_steps, epochs=10**6, verbose=0, shuffle=False,
        validation_data=heldout, callbacks=[stop, *csv_logger(args.output, log_name)])
    return {"steps": int(stop.batches), "seconds": round(time.perf_counter() - begin, 1),
            "scores": scores(model, *heldout, args.digits),
            "during": _range(history.history["val_exact_match"])}


def main(argv=None):
    """Pretrains, evolves the adapters, continues fit(); returns `(results, history)`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initialisation, the training problems and evolution")
    parser.add_argument("--digits", type=int, default=3, help="digits of each operand")
    parser.add_argument("--pretrain-steps", type=int, default=8000,
                        help="fit() batches before the adapters are added")
    parser.add_argument("--batch-size", type=int, default=64, help="problems per fit() batch")
    parser.add_argument("--learning-rate", type=float, default=0.003, help="Adam's, for fit()")
    parser.add_argument("--epoch-steps", type=int, default=250,
                        help="fit() batches per logged epoch (pretraining and the baseline)")
    parser.add_argument("--rank", type=int, default=4, help="rank of the LoRA adapters")
    parser.add_argument("--population", type=int, default=256, help="OpenES population size")
    parser.add_argument("--sigma", type=float, default=0.02, help="OpenES noise scale")
    parser.add_argument("--es-learning-rate", type=float, default=0.003,
                        help="OpenES's Adam learning rate")
    parser.add_argument("--perturbation-rank", type=int, default=None,
                        help="OpenES perturbation_rank (None: full-rank noise on the factors)")
    parser.add_argument("--generations", type=int, default=30, help="generations of evolution")
    parser.add_argument("--fitness-problems", type=int, default=64,
                        help="new training problems every member is scored on, per generation")
    parser.add_argument("--low-learning-rate", type=float, default=0.0003,
                        help="Adam's learning rate of the second fit() baseline")
    parser.add_argument("--fit-seconds", type=float, default=None,
                        help="wall time of the continued fit() (None: the evolution's)")
    parser.add_argument("--no-fit-baseline", action="store_true",
                        help="skip the fit() baselines after the evolution")
    parser.add_argument("--output", default=None,
                        help="directory for the CSV histories and results.json (none: print)")
    parser.add_argument("--verbose", type=int, default=0,
                        help="evolve(): 0 silent, 1 progress bar, 2 one line per generation")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.output is not None:
        os.makedirs(args.output, exist_ok=True)

    train, _dev, heldout = split_problems(args.digits)
    x_held, y_held = encode(heldout, args.digits)

    # 1. Gradient descent for a fixed number of steps: a function of the seed.
    model = build_model(args.digits, args.seed)
    compile_for_fit(model, args.learning_rate)
    epochs = max(1, args.pretrain_steps // args.epoch_steps)
    steps = args.pretrain_steps // epochs
    pre_start = time.perf_counter()
    model.fit(problem_batches(train, args.digits, args.batch_size, args.seed, 0),
              steps_per_epoch=steps, epochs=epochs, verbose=0, shuffle=False,
              validation_data=(x_held, y_held), callbacks=csv_logger(args.output,
                                                                     "pretrain.csv"))
    pretrain_seconds = time.perf_counter() - pre_start
    pretrained = model.get_weights()
    optimizer_state = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    before = scores(model, x_held, y_held, args.digits)
    print(f"pretrained {epochs * steps} steps in {pretrain_seconds:.0f} s: held-out exact "
          f"match {before['exact_match']:.4f} (digits {before['digit_accuracy']:.4f})",
          flush=True)

    # 2. Evolution of LoRA adapters on exact match, from the same weights (a copy of the
    #    model, so the original keeps its Adam state for the baseline).
    evolved = build_model(args.digits, args.seed)
    evolved.set_weights(pretrained)
    evolved.compile(loss=answer_cross_entropy)
    adapted = enable_lora(evolved, args.rank)
    strategy = keras_lrne.strategies.OpenES(
        args.population, sigma=args.sigma, learning_rate=args.es_learning_rate,
        perturbation_rank=args.perturbation_rank)
    evolution_start = time.perf_counter()
    history = keras_lrne.evolve(
        evolved, FreshProblems(train, args.digits, args.fitness_problems, args.seed),
        validation_data=(x_held, y_held), strategy=strategy, generations=args.generations,
        seed=args.seed, verbose=args.verbose, callbacks=csv_logger(args.output,
                                                                   "evolution.csv"))
    evolution_seconds = time.perf_counter() - evolution_start
    after = scores(evolved, x_held, y_held, args.digits)
    print(f"evolved {len(history.epoch)} generations (OpenES({args.population}), LoRA rank "
          f"{args.rank} on {len(adapted)} layers, {evolvable_count(evolved):,} numbers) in "
          f"{evolution_seconds:.0f} s: held-out exact match {after['exact_match']:.4f}",
          flush=True)

    # 3. The baselines: fit() continued on the cross-entropy for the same wall time, from
    #    the same weights and Adam state, at pretraining's learning rate and at
    #    `--low-learning-rate`, on the same stream of new training problems.
    baselines = {}
    if not args.no_fit_baseline:
        seconds = evolution_seconds if args.fit_seconds is None else args.fit_seconds
        for name, rate in (("fit", args.learning_rate), ("fit_low_lr", args.low_learning_rate)):
            model.set_weights(pretrained)
            for variable, value in zip(model.optimizer.variables, optimizer_state):
                variable.assign(value)
            model.optimizer.learning_rate.assign(rate)
            baselines[name] = continue_fit(model, train, (x_held, y_held), seconds, args,
                                           f"{name}_continued.csv")
            print(f"fit() continued at learning rate {rate:g}: {baselines[name]['steps']} "
                  f"steps in the same time, held-out exact match "
                  f"{baselines[name]['scores']['exact_match']:.4f}", flush=True)

    results = {
        "seed": args.seed, "digits": args.digits, "data_seed": DATA_SEED,
        "heldout_problems": len(heldout), "train_problems": len(train),
        "pretrain_steps": epochs * steps, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "rank": args.rank,
        "lora_layers": len(adapted), "lora_parameters": evolvable_count(evolved),
        "population": args.population, "sigma": args.sigma,
        "es_learning_rate": args.es_learning_rate,
        "perturbation_rank": args.perturbation_rank, "generations": len(history.epoch),
        "fitness_problems": args.fitness_problems,
        "low_learning_rate": args.low_learning_rate,
        "before": before, "after_evolution": after,
        **{f"after_{name}": arm["scores"] for name, arm in baselines.items()},
        "pretrain_seconds": round(pretrain_seconds, 1),
        "evolution_seconds": round(evolution_seconds, 1),
        **{f"{name}_steps": arm["steps"] for name, arm in baselines.items()},
        **{f"{name}_seconds": arm["seconds"] for name, arm in baselines.items()},
        # Held-out exact match at every generation / epoch end (described, never selected).
        "heldout_during": {"evolution": _range(history.history["val_fitness"]),
                           **{name: arm["during"] for name, arm in baselines.items()}},
        "first_fitness": history.history["fitness"][0],
        "final_fitness": history.history["fitness"][-1],
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    if args.output is not None:
        with open(os.path.join(args.output, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    print(json.dumps(results))
    return results, history


if __name__ == "__main__":
    main()

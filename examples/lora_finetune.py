"""Fine-tune a pretrained language model by evolving its Keras LoRA adapters on accuracy.

Gradient descent first: the "full" LM preset (Keras `MultiHeadAttention` and `Dense`
layers, a tied embedding) is trained with `fit()` for `--pretrain-seconds` on the
embedded offline corpus (character tokens, the scale `keras-lrne lm` uses on a CPU), a
Keras callback stopping it by wall time. Then `enable_lora(rank)` on every `Dense` and
`EinsumDense` layer (attention query/key/value/output, feed-forward) and
`keras_lrne.evolve` evolves only the adapters, base weights frozen, on a reward that
gradient descent cannot use directly: the exact-match accuracy of the greedy next token
(`argmax(logits) == target`), a `keras_lrne.tasks.Fitness` maximised over a fixed sample
of training sequences. It prints the held-out accuracy and cross-entropy before and after
evolution, and ends with one JSON line of results. About 3 minutes on a 2-core CPU.

    python examples/lora_finetune.py
    python examples/lora_finetune.py --strategy openes --seed 1

The same run from the command line, with a run directory, History CSV, `--resume` and a
summary: `keras-lrne lm --lora 4 --pretrain-seconds 60`.
"""

import argparse
import json
import time

import keras

import keras_lrne
from keras_lrne.commands.lora import enable_lora, held_out, next_token_accuracy, pretrain
from keras_lrne.tasks import Fitness, LanguageModeling

SEQUENCE_LENGTH = 64


def make_strategy(name, population):
    """The GA or OpenAI-ES, with settings for small steps around the pretrained model."""
    if name == "ga":
        return keras_lrne.strategies.GA(population_size=population,
                                        num_parents=max(1, population // 4),
                                        mutation_rate=0.005)
    return keras_lrne.strategies.OpenES(population_size=population, sigma=0.01,
                                        learning_rate=0.001)


def main(argv=None):
    """Pretrains, evolves the adapters, prints the numbers; returns `(results, history)`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data shuffle, the initialisation and evolution")
    parser.add_argument("--pretrain-seconds", type=float, default=60.0,
                        help="wall-time budget of fit() before evolution")
    parser.add_argument("--rank", type=int, default=4, help="rank of the LoRA adapters")
    parser.add_argument("--strategy", choices=("ga", "openes"), default="ga",
                        help="ga: GA(population, population // 4, mutation_rate=0.005); "
                        "openes: OpenES(population, sigma=0.01, learning_rate=0.001)")
    parser.add_argument("--population", type=int, default=16, help="population size")
    parser.add_argument("--generations", type=int, default=80, help="generations")
    parser.add_argument("--num-sequences", type=int, default=128,
                        help="training sequences every member's accuracy is scored on "
                        "(and held-out sequences the results are measured on)")
    parser.add_argument("--verbose", type=int, default=0,
                        help="evolve(): 0 silent, 1 progress bar, 2 one line per generation")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    # The fitness sample and the held-out slice (the last 10% of the corpus), and every
    # training window of the same corpus for fit(): the same seed, so the same shuffle.
    task = LanguageModeling(tokenizer="character", sequence_length=SEQUENCE_LENGTH,
                            num_sequences=args.num_sequences, seed=args.seed)
    every = LanguageModeling(tokenizer="character", sequence_length=SEQUENCE_LENGTH,
                             num_sequences=task.num_train_windows, seed=args.seed)
    x_fit, y_fit = task.train_data()
    x_val, y_val = task.validation_data()

    # 1. Gradient descent: fit() with Adam until the time budget runs out.
    keras.utils.set_random_seed(args.seed)
    model = keras_lrne.presets.language_model("full", vocab_size=task.vocab_size,
                                              sequence_length=SEQUENCE_LENGTH)
    stats = pretrain(model, *every.train_data(), args.pretrain_seconds)
    print(f"pretrained: {stats['batches']} batches of 32 in {stats['fit_seconds']:.1f} s, "
          f"train loss {stats['train_loss']:.3f}")
    before = held_out(model, x_val, y_val)
    train_before = held_out(model, x_fit, y_fit)
    print(f"before evolution: held-out accuracy {before['accuracy']:.4f}, held-out loss "
          f"{before['loss']:.4f} (fitness sample accuracy {train_before['accuracy']:.4f})")

    # 2. LoRA adapters; evolve() then evolves them alone (the `_b` factors start at zero,
    #    so every member starts at the pretrained model).
    adapted = enable_lora(model, args.rank)
    history = keras_lrne.evolve(
        model, Fitness(next_token_accuracy, data=(x_fit, y_fit)),
        strategy=make_strategy(args.strategy, args.population),
        generations=args.generations, seed=args.seed, verbose=args.verbose)
    after = held_out(model, x_val, y_val)
    train_after = held_out(model, x_fit, y_fit)
    print(f"after {len(history.epoch)} generations ({args.strategy}, LoRA rank {args.rank} "
          f"on {len(adapted)} layers): held-out accuracy {after['accuracy']:.4f}, held-out "
          f"loss {after['loss']:.4f} (fitness sample accuracy {train_after['accuracy']:.4f})")

    results = {
        "seed": args.seed, "strategy": args.strategy, "rank": args.rank,
        "population": args.population, "generations": len(history.epoch),
        "pretrain_seconds": args.pretrain_seconds, "pretrain_batches": stats["batches"],
        "train_accuracy_before": round(train_before["accuracy"], 4),
        "train_accuracy_after": round(train_after["accuracy"], 4),
        "heldout_accuracy_before": round(before["accuracy"], 4),
        "heldout_accuracy_after": round(after["accuracy"], 4),
        "heldout_loss_before": round(before["loss"], 4),
        "heldout_loss_after": round(after["loss"], 4),
        "evolution_seconds": round(sum(history.history["generation_seconds"]), 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(results))
    return results, history


if __name__ == "__main__":
    main()

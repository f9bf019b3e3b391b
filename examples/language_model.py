"""Evolve a low-rank transformer language model with the Keras API.

Builds the paper's model from keras-lrne layers (rather than `keras_lrne.presets`), then
evolves it like `fit()` trains: `compile(loss=...)`, `evolve(...)`, callbacks, History.

    python examples/language_model.py                 # embedded offline corpus
    python examples/language_model.py --text-file stories.txt --generations 300
"""

import argparse

import keras

import keras_lrne
from keras_lrne import layers as lrl


def build_model(vocab_size, sequence_length, hidden=32, rank=4, embed_rank=16):
    inputs = keras.Input((sequence_length,), dtype="int32")
    embedding = lrl.FactorizedEmbedding(vocab_size, hidden, rank=embed_rank,
                                        use_output_bias=True)
    x = embedding(inputs)
    x = lrl.RotaryPosition(dims=4)(x)
    for _ in range(3):
        x = lrl.TransformerBlock(num_heads=4, key_dim=4, ff_dim=128, rank=rank)(x)
    logits = embedding.attend(x)  # tied output head
    return keras_lrne.Model(inputs, logits)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--text-file", default=None,
                        help="a local UTF-8 text file (default: the embedded corpus)")
    parser.add_argument("--generations", type=int, default=30, help="generations")
    parser.add_argument("--population", type=int, default=32, help="population size")
    parser.add_argument("--parents", type=int, default=4,
                        help="truncation size, survivors per generation")
    parser.add_argument("--sequence-length", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--num-sequences", type=int, default=32,
                        help="sequences every member is evaluated on")
    parser.add_argument("--verbose", type=int, default=1,
                        help="0 silent, 1 progress bar, 2 one line per generation")
    args = parser.parse_args(argv)

    task = keras_lrne.tasks.LanguageModeling(
        text_file=args.text_file,
        sequence_length=args.sequence_length,
        num_sequences=args.num_sequences,
    )
    model = build_model(task.vocab_size, args.sequence_length)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.evolve(
        task,
        strategy=keras_lrne.strategies.GA(population_size=args.population,
                                          num_parents=args.parents),
        generations=args.generations,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=20,
                                                 restore_best_weights=True)],
        seed=0,
        verbose=args.verbose,
    )
    print(f"elite loss: {history.history['loss'][0]:.3f} -> {history.history['loss'][-1]:.3f}")
    return history


if __name__ == "__main__":
    main()

"""How the study's OpenES settings were chosen: on the dev split, with seed 100.

Seed 100 is not one of the study's seeds, and the dev problems are neither trained on
nor the held-out set (`examples/lora_finetune.py`'s `split_problems`). The model is
pretrained as the example does (8,000 steps), then each setting given as a JSON argument
evolves LoRA-4 adapters from it for 30 generations; the dev exact match is printed
every 3 generations. The record is in `tuning.md`.

    python docs/results/lora_finetune/tune.py '{"sigma": 0.02, "lr": 0.01}' ...
"""

import os
import pathlib
import sys
import time

import numpy as np

import keras_lrne
from keras_lrne.commands.lora import enable_lora

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "examples"))
import lora_finetune as example  # noqa: E402

DIGITS, SEED = 3, 100


def main(argv):
    import json

    train, dev, _heldout = example.split_problems(DIGITS)
    x_dev, y_dev = example.encode(dev, DIGITS)
    weights = ROOT / "runs" / "lora_finetune_tune_seed100.weights.h5"
    model = example.build_model(DIGITS, SEED)
    example.compile_for_fit(model, 0.003)
    if not weights.exists():
        os.makedirs(weights.parent, exist_ok=True)
        model.fit(example.problem_batches(train, DIGITS, 64, SEED, 0), steps_per_epoch=250,
                  epochs=32, verbose=0, shuffle=False)
        model.save_weights(str(weights))
    model.load_weights(str(weights))
    print("dev before", example.scores(model, x_dev, y_dev, DIGITS), flush=True)
    for setting in map(json.loads, argv):
        evolved = example.build_model(DIGITS, SEED)
        evolved.load_weights(str(weights))
        evolved.compile(loss=example.answer_cross_entropy)
        enable_lora(evolved, 4)
        start = time.perf_counter()
        history = keras_lrne.evolve(
            evolved, example.FreshProblems(train, DIGITS, 64, SEED),
            validation_data=(x_dev, y_dev), generations=30, seed=SEED, verbose=0,
            strategy=keras_lrne.strategies.OpenES(256, sigma=setting["sigma"],
                                                  learning_rate=setting["lr"]))
        dev_curve = [round(v, 4) for v in history.history["val_fitness"]]
        print(setting, "seconds", round(time.perf_counter() - start), "median generation s",
              round(float(np.median(history.history["generation_seconds"])), 2),
              "dev every 3", dev_curve[::3], "final", dev_curve[-1], flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""The abstract's mutation-sensitivity claim on the LM: from fixed parents, how much does
one mutation change the loss, per variant?

For each variant (factorized, full, small) and seed, the parent is the preset model at
its initialisation (generation 0) and, with `--evolve-generations G`, the elite after G
GA generations on the same data (a parent that has been selected). From each parent
`--children` children are drawn with the GA's own mutation (`GA.noise_stds`: the
mutation rate times each tensor's init std; factors use the factor mutation rate, the
square root of the mutation rate by default) and scored on the parent's training
sequences in one compiled population call. It reports the distribution of the loss
change (child - parent): mean, median, std, the fraction of children that improve, and
the relative size of the change of the effective weight matrices (||W_child - W|| /
||W||, W = U V for factors). Data: the embedded corpus, character tokens, 32 sequences
of 64 tokens (the `keras-lrne lm` defaults). The last line is JSON.

    python benchmarks/mutation_sensitivity.py --seeds 0,1,2,3,4 --children 64
    python benchmarks/mutation_sensitivity.py --seeds 0,1,2,3,4 --children 64 \
        --evolve-generations 100 --variants factorized --factor-mutation-rate 0.01

(the second: the factorized model with its factors stepped at the full model's relative
rate, whose effective weight change is then close to the full model's).
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import keras_lrne
from keras_lrne import genome
from keras_lrne import population as pop
from keras_lrne.strategies import GA
from keras_lrne.tasks import LanguageModeling


def weight_matrices(model):
    """The effective 2-D weights of every layer: kernels, and U @ V of factor pairs."""
    out = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for name in ("kernel", "embeddings"):
            value = getattr(type(layer), name, None)
            if isinstance(value, property) or hasattr(layer, f"_{name}"):
                try:
                    w = keras.ops.convert_to_numpy(getattr(layer, name))
                except (AttributeError, ValueError):
                    continue
                if w.ndim >= 2:
                    out.append(w.reshape(-1, w.shape[-1]))
                break
    return out


def sensitivity(model, x, y, children, mutation_rate, seed, factor_mutation_rate=None):
    """Loss changes and relative weight changes of `children` mutants of `model`."""
    specs = genome.collect_variable_specs(model)
    evolvable = [s for s in specs if s.evolvable]
    ga = GA(children + 1, 1, mutation_rate=mutation_rate,
            factor_mutation_rate=factor_mutation_rate)
    stds = ga.noise_stds(evolvable)
    rng = np.random.default_rng([seed, 11])
    parent = [keras.ops.convert_to_numpy(model.trainable_variables[s.index]) for s in evolvable]
    population = [np.concatenate([p[None], p[None] + rng.normal(0, std, (children, *p.shape))
                                  .astype(p.dtype)]) for p, std in zip(parent, stds)]
    functions = pop.PopulationFunctions(model, specs, model.loss, chunk_size=min(16, children + 1))
    losses = np.asarray(functions.evaluate(
        [keras.ops.convert_to_tensor(v) for v in population], functions.frozen_values(),
        functions.non_trainable_values(), pop.to_tensors(pop.batch_data(x, 8)),
        pop.to_tensors(pop.batch_data(y, 8))))
    base = weight_matrices(model)
    changes = []
    for i in range(1, min(children, 8) + 1):  # relative weight change, on 8 children
        for variable, values in zip([model.trainable_variables[s.index] for s in evolvable],
                                    population):
            variable.assign(values[i])
        mutated = weight_matrices(model)
        changes.append(np.mean([np.linalg.norm(m - b) / np.linalg.norm(b)
                                for m, b in zip(mutated, base)]))
    for variable, value in zip([model.trainable_variables[s.index] for s in evolvable], parent):
        variable.assign(value)
    delta = losses[1:] - losses[0]
    return {"parent_loss": float(losses[0]), "mean_change": float(np.mean(delta)),
            "median_change": float(np.median(delta)), "std_change": float(np.std(delta)),
            "improved_fraction": float(np.mean(delta < 0)),
            "relative_weight_change": float(np.mean(changes))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--children", type=int, default=64)
    parser.add_argument("--evolve-generations", type=int, default=0)
    parser.add_argument("--variants", default="factorized,full,small")
    parser.add_argument("--factor-mutation-rate", type=float, default=None,
                        help="the factors' relative mutation std (GA factor_mutation_rate; "
                        "default: the square root of 0.01, as in the paper); evolution "
                        "to the later parent uses it too")
    args = parser.parse_args()
    factor_rate = args.factor_mutation_rate
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        task = LanguageModeling(tokenizer="character", sequence_length=64, num_sequences=32,
                                seed=seed)
        x, y = task.train_data(0)
        for variant in args.variants.split(","):
            keras.utils.set_random_seed(seed)
            model = keras_lrne.presets.language_model(variant, vocab_size=task.vocab_size,
                                                      sequence_length=64, rank=4,
                                                      embed_rank=32)
            model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            parents = [("initial", model)]
            if args.evolve_generations:
                evolved = keras_lrne.presets.language_model(
                    variant, vocab_size=task.vocab_size, sequence_length=64, rank=4,
                    embed_rank=32)
                evolved.compile(loss=model.loss)
                keras_lrne.evolve(evolved, x, y,
                                  strategy=GA(32, 4, factor_mutation_rate=factor_rate),
                                  generations=args.evolve_generations, seed=seed, verbose=0)
                parents.append((f"after_{args.evolve_generations}", evolved))
            for name, parent in parents:
                result = sensitivity(parent, x, y, args.children, 0.01, seed, factor_rate)
                rows.append({"variant": variant, "seed": seed, "parent": name, **result})
                print(f"{variant:10s} seed {seed} {name:10s} parent {result['parent_loss']:.3f}"
                      f" change mean {result['mean_change']:+.4f} median "
                      f"{result['median_change']:+.4f} std {result['std_change']:.4f} "
                      f"improved {result['improved_fraction']:.2f} |dW|/|W| "
                      f"{result['relative_weight_change']:.4f}", flush=True)
    summary = {}
    for variant in args.variants.split(","):
        for name in sorted({r["parent"] for r in rows}):
            group = [r for r in rows if r["variant"] == variant and r["parent"] == name]
            summary[f"{variant}@{name}"] = {
                key: float(np.mean([r[key] for r in group]))
                for key in ("mean_change", "std_change", "improved_fraction",
                            "relative_weight_change")}
    print(json.dumps({"children": args.children, "seeds": args.seeds,
                      "factor_mutation_rate": factor_rate, "by_variant": summary}))


if __name__ == "__main__":
    main()

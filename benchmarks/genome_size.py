"""Bytes per member: a lineage record vs the member's weights (the paper's selling point).

For each preset of the paper (LM, Atari, CarRacing; factorized, full and small) this
prints the bytes of one member's evolvable weights (float32) and the bytes its lineage
costs per generation: 4 bytes of parent index and 4 of mutation seed, uncompressed, and
as stored in a run's `lineage.npz` (compressed; measured on a simulated run of the
paper's LM size: 512 members x 300 generations). The last line is one JSON object.

    python benchmarks/genome_size.py
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import keras_lrne
from keras_lrne import genome


def weight_bytes(model):
    specs = genome.collect_variable_specs(model)
    return int(sum(np.prod(s.shape) * 4 for s in specs if s.evolvable))


def simulated_lineage_bytes(population, generations, parents, seed=0):
    rng = np.random.default_rng(seed)
    lineage = keras_lrne.Lineage(seed, population, {"strategy": "GA"})
    for _ in range(generations):
        chosen = rng.integers(0, parents, population)
        seeds = rng.integers(0, 2**31 - 1, population)
        chosen[:parents], seeds[:parents] = np.arange(parents), -1  # elites: unchanged
        lineage.record(chosen, seeds)
    return len(lineage.to_bytes())


def main():
    presets = keras_lrne.presets
    models = {
        "lm factorized": presets.language_model("factorized"),
        "lm full": presets.language_model("full"),
        "lm small": presets.language_model("small"),
        "atari factorized": presets.atari_policy("factorized"),
        "atari full": presets.atari_policy("full"),
        "carracing factorized": presets.carracing_policy("factorized"),
        "carracing full": presets.carracing_policy("full"),
    }
    population, generations, parents = 512, 300, 16
    stored = simulated_lineage_bytes(population, generations, parents)
    per_member_generation = stored / (population * generations)
    print(f"lineage.npz of {population} members x {generations} generations: {stored:,} "
          f"bytes = {per_member_generation:.2f} bytes per member per generation "
          "(8 uncompressed)")
    print(f"{'model':<22}{'weights B/member':>18}{'lineage B/member/gen':>22}{'ratio':>12}")
    rows = {}
    for name, model in models.items():
        weights = weight_bytes(model)
        rows[name] = {"weight_bytes": weights, "ratio_vs_8_bytes": weights / 8}
        print(f"{name:<22}{weights:>18,}{8:>22}{weights / 8:>12,.0f}x")
    print(json.dumps({"lineage_bytes_per_member_generation": round(per_member_generation, 3),
                      "lineage_raw_bytes_per_member_generation": 8, "models": rows}))


if __name__ == "__main__":
    main()

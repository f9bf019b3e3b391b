"""Numbers the README and the docs quote are the numbers of the published files.

Each check renders a sentence or table row of a page from the published files
(`docs/results/*/comparison.csv` and `comparison.md`, the runs' `history.csv`, the
mutation-sensitivity JSON, `benchmarks/results/*.jsonl`) and looks for it in the page,
with line breaks read as spaces: a page that drifts from its file, or a file that is
replaced without its page, fails here.
"""

import csv
import json
import math
import pathlib
import re

import numpy as np
import pytest

from keras_lrne import comparison

pytestmark = pytest.mark.backend_independent

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
UNIFORM_105 = math.log(105)
#: The generations of section 13's runs (PGPE against OpenES on HalfCheetah-v5).
HALFCHEETAH_PGPE_GENERATIONS = 25


def page(path):
    """The page's text with every run of whitespace read as one space."""
    return re.sub(r"\s+", " ", (ROOT / path).read_text())


def assert_quotes(path, *sentences):
    text = page(path)
    missing = [s for s in sentences if re.sub(r"\s+", " ", s) not in text]
    assert not missing, f"{path} no longer says (from the published files): {missing}"


def runs(name):
    return comparison.read_table(RESULTS / name / "comparison.csv")[0]


def mean(name, label, column):
    return float(np.mean([r[column] for r in runs(name) if r["label"] == label]))


def values(name, label, column):
    return [r[column] for r in sorted(runs(name), key=lambda r: r["seed"])
            if r["label"] == label]


def holm_p(name, comparison_text):
    """The Holm-adjusted t-test p of one comparison line of a published report."""
    report = (RESULTS / name / "comparison.md").read_text()
    line = next(line for line in report.splitlines()
                if line.startswith(f"- {comparison_text} ("))
    return re.search(r"paired t = [-\d.]+, p = [\d.]+, Holm p = ([\d.]+);", line).group(1)


def histories(name, label):
    """Every seed's `history.csv` rows of one published variant, by seed."""
    out = []
    for path in sorted((RESULTS / name / label).glob("seed_*/history.csv")):
        with open(path) as f:
            out.append(list(csv.DictReader(f)))
    assert out, (name, label)
    return out


def first_below(rows, threshold):
    return next((int(r["epoch"]) for r in rows if float(r["loss"]) < threshold), None)


def below_uniform_range(name, label):
    firsts = [first_below(rows, UNIFORM_105) for rows in histories(name, label)]
    return f"{min(firsts)}-{max(firsts)}"


def loss_after(name, label, generations):
    return float(np.mean([float(rows[generations - 1]["loss"])
                          for rows in histories(name, label)]))


def seed0_final(name, label):
    last = histories(name, label)[0][-1]
    return float(last["loss"]), float(last["val_loss"])


def test_lm_headline_numbers():
    fac, full = mean("lm_variants", "factorized", "final_loss"), mean(
        "lm_variants", "full", "final_loss")
    fac_val = mean("lm_variants", "factorized", "final_val_loss")
    small_val = mean("lm_variants", "small", "final_val_loss")
    p_loss = holm_p("lm_variants", "factorized vs full, final loss")
    p_val = holm_p("lm_variants", "factorized vs full, final val_loss")
    assert_quotes("README.md",
                  f"in training loss on every seed ({fac:.3f} vs {full:.3f}, Holm p = {p_loss})",
                  f"not significantly in validation loss (Holm p = {p_val})",
                  f"beats factorized in validation loss ({small_val:.3f} vs {fac_val:.3f})")
    assert_quotes("docs/results.md",
                  f"({fac:.3f} vs {full:.3f}, Holm p = {p_loss}), not significantly in "
                  f"validation loss (Holm p = {p_val})",
                  f"| **{fac:.3f} ± ")
    long_full = mean("mutation_rates", "full_mr_0.01", "final_loss")
    long_fac = mean("mutation_rates", "factorized_fr_0.1", "final_loss")
    p_long = holm_p("mutation_rates", "factorized_fr_0.1 vs full_mr_0.01, final loss")
    for path in ("README.md", "docs/results.md"):
        assert_quotes(path, f"{long_full:.3f} vs factorized {long_fac:.3f}, Holm p = {p_long}"
                      if path == "README.md" else
                      f"({long_full:.3f} vs {long_fac:.3f}, 5 of 5 seeds, Holm p = {p_long})")


def test_step_sizes_and_size_matched_numbers():
    summary = json.loads((RESULTS / "mutation_sensitivity" / "init.txt")
                         .read_text().strip().splitlines()[-1])["by_variant"]
    factor = summary["factorized@initial"]["relative_weight_change"]
    full = summary["full@initial"]["relative_weight_change"]
    ratio = f"{factor / full:.0f}x"
    quoted = f"{factor:.3f} vs {full:.4f} of their norm"
    assert_quotes("README.md", f"moves the effective weights {ratio} as far", quoted)
    assert_quotes("docs/results.md", f"{ratio} as far as the full model's rate ({quoted})")
    chars = holm_p("size_matched", "factorized_r1_e4 vs small, final loss")
    words = holm_p("size_matched_word", "factorized_r1_e4 vs small, final loss")
    assert_quotes("README.md", f"Holm p = {chars} on characters, {words} on words")


def test_halfcheetah_numbers():
    fac = values("halfcheetah", "factorized", "final_episode_return")
    full = values("halfcheetah", "full", "final_episode_return")
    small = values("halfcheetah", "small", "final_episode_return")
    p = comparison.holm([comparison.paired_significance(fac, full)["paired_p"],
                         comparison.paired_significance(fac, small)["paired_p"]])
    quoted = f"{np.mean(fac):,.0f} vs {np.mean(full):,.0f}, Holm p = {max(p):.4f}"
    assert_quotes("README.md", quoted)
    assert_quotes("docs/results.md", quoted, f"both are {max(p):.4f}")
    seed0 = f"factorized {fac[0]:,.0f} vs full {full[0]:,.0f} at seed 0"
    assert_quotes("docs/results.md", seed0)


def test_generations_below_uniform_count_from_zero():
    """Tables and text give the first generation below uniform as the `epoch` of the
    runs' published histories (counted from 0)."""
    rows = {("mutation_rates", "full_mr_0.01"): "| full | 0.01 (paper) |",
            ("mutation_rates", "full_mr_0.03"): "| full | 0.03 |",
            ("mutation_rates", "full_mr_0.1"): "| full | 0.1 |",
            ("mutation_rates", "factorized_fr_0.1"): "| factorized | 0.1 (paper) |",
            ("mutation_rates", "factorized_fr_0.01"): "| factorized | 0.01 |",
            ("init", "full_scaled"): "| full | scaled |",
            ("init", "factorized_scaled"): "| factorized | scaled |"}
    text = (ROOT / "docs" / "results.md").read_text()
    for (name, label), start in rows.items():
        line = next(line for line in text.splitlines() if line.startswith(start))
        after_200 = f"{loss_after(name, label, 200):.3f}"
        assert f"| {after_200} |" in line, (label, after_200, line)
        assert line.rstrip().endswith(f"| {below_uniform_range(name, label)} |"), (label, line)
    factorized = below_uniform_range("mutation_rates", "factorized_fr_0.1").split("-")
    assert_quotes("docs/results.md", "goes below uniform between generations "
                  f"{factorized[0]} and {factorized[1]}")
    chars = below_uniform_range("size_matched", "factorized_r1_e4")
    assert f"| {chars} |" in text


def test_atari_milliseconds_per_step_cover_both_games():
    per_step = {}
    for game in ("frostbite", "kangaroo"):
        for run in runs(game):
            ms = 1000 * run["first_stage_seconds"] / run["env_steps"]
            per_step.setdefault(run["label"], {}).setdefault(game, []).append(ms)

    def span(values):
        return f"{min(values):.2f}-{max(values):.2f}"

    fac, full = per_step["factorized"], per_step["full"]
    assert_quotes(
        "docs/results.md",
        f"{span(fac['frostbite'] + fac['kangaroo'])} ms per step for factorized "
        f"(Frostbite {span(fac['frostbite'])}, Kangaroo {span(fac['kangaroo'])}) against "
        f"{span(full['frostbite'] + full['kangaroo'])} ms for full (Frostbite "
        f"{span(full['frostbite'])}, Kangaroo {span(full['kangaroo'])})")


def test_single_run_table_is_seed_0_of_the_published_runs():
    rows = {"| factorized (rank 4, embed 32) | 11,737 |": ("mutation_rates", "factorized_fr_0.1"),
            "| full | 35,289 |": ("mutation_rates", "full_mr_0.01"),
            "| small (hidden 4, FF 16) | 1,941 |": ("size_matched", "small"),
            "| factorized, `--init scaled` (not the paper's) | 11,737 |":
                ("init", "factorized_scaled")}
    text = (ROOT / "docs" / "results.md").read_text()
    for start, (name, label) in rows.items():
        loss, val_loss = seed0_final(name, label)
        assert f"{start} {loss:.3f} | {val_loss:.3f} |" in text, start
    loss, val_loss = seed0_final("mutation_rates", "factorized_fr_0.1")
    _, scaled_val = seed0_final("init", "factorized_scaled")
    assert_quotes("docs/quickstart.md",
                  f"`final_val_loss` {val_loss:.3f} on the validation sequences, "
                  f"{UNIFORM_105 - val_loss:.2f} below uniform",
                  f"(its training loss, `final_loss`, is {loss:.3f})",
                  f"ends at validation loss {scaled_val:.3f}")


def test_default_run_baselines():
    """The unigram baseline the quick start quotes is seed 0's, and the margins quoted
    against it compare validation with validation."""
    from keras_lrne.tasks import LanguageModeling

    unigram = LanguageModeling(tokenizer="character", sequence_length=64, num_sequences=32,
                               seed=0).unigram_loss
    _, val_loss = seed0_final("mutation_rates", "factorized_fr_0.1")
    _, scaled_val = seed0_final("init", "factorized_scaled")
    assert_quotes("docs/quickstart.md", f"scored on the validation sequences: {unigram:.3f}",
                  f"{val_loss - unigram:.2f} above unigram",
                  f"{scaled_val - unigram:.2f} above unigram")
    assert_quotes("docs/results.md", f"unigram {unigram:.3f} (a unigram model",
                  f"the GA's factorized model {val_loss - unigram:.2f} above it")


def test_low_rank_benchmark_numbers():
    lines = {}
    for path in sorted((ROOT / "benchmarks" / "results").glob("low_rank_population_*.jsonl")):
        record = json.loads(path.read_text().strip().splitlines()[-1])
        lines[record["backend"]] = record
    tf, jax = lines["tensorflow"], lines["jax"]
    evaluation = f"{tf['vs_inference']:.2f}x on TensorFlow and "
    generation = (f"at {tf['vs_inference_generation']:.2f}x and "
                  f"{jax['vs_inference_generation']:.2f}x")
    assert_quotes("docs/low_rank.md",
                  f"call ran at {evaluation}{jax['vs_inference']:.2f}x on JAX",
                  generation,
                  f"{tf['full_rank_over_low_rank_seconds']:.1f}x on TensorFlow and "
                  f"{jax['full_rank_over_low_rank_seconds']:.1f}x on JAX",
                  f"{tf['peak_bytes_ratio_largest_over_smallest']['rank1']:.0f}x on TensorFlow "
                  f"and {jax['peak_bytes_ratio_largest_over_smallest']['rank1']:.0f}x on JAX",
                  f"{tf['peak_bytes_ratio_largest_over_smallest']['lora4']:.0f}x for LoRA")
    assert_quotes("benchmarks/README.md",
                  f"| {tf['vs_inference']:.2f}, at the target in this one run",
                  f"| {jax['vs_inference']:.2f}: missed |",
                  f"{tf['vs_inference_generation']:.2f}x (TensorFlow) and "
                  f"{jax['vs_inference_generation']:.2f}x (JAX)")
    for setting, row in (("rank1@4096", "`perturbation_rank=1`, P=4,096"),
                         ("lora4@4096", "LoRA rank 4, P=4,096")):
        tf_s, jax_s = (lines[b]["seconds_per_generation"][setting] for b in ("tensorflow", "jax"))
        assert_quotes("docs/low_rank.md", f"| {row} | {tf_s:.2f} s | {jax_s:.2f} s |")


def hyperscale(backend, setting):
    """The last JSON line of one published `benchmarks/hyperscale.py` run."""
    path = ROOT / "benchmarks" / "results" / f"hyperscale_{backend}_{setting}_2026-12-07.jsonl"
    return json.loads(path.read_text().strip().splitlines()[-1])


def test_hyperscale_numbers():
    tf, jax = hyperscale("tensorflow", "rank1"), hyperscale("jax", "rank1")
    rows = {b: {r["population"]: r for r in line["settings"]["rank1"]["rows"]}
            for b, line in (("tf", tf), ("jax", jax))}
    ratio = {b: rows[b][65536]["peak_rss_bytes"] / rows[b][256]["peak_rss_bytes"]
             for b in rows}
    mib = {b: {p: round(r["peak_rss_bytes"] / 2**20) for p, r in rows[b].items()}
           for b in rows}
    assert_quotes(
        "docs/low_rank.md",
        f"grew {ratio['tf']:.2f}x (TensorFlow) and {ratio['jax']:.2f}x (JAX) from P=256 to "
        f"65,536, and at P=4,096 a whole generation (ask, evaluation, tell) ran at "
        f"{tf['vs_inference_generation']:.2f}x (TensorFlow) and "
        f"{jax['vs_inference_generation']:.2f}x (JAX)",
        f"| s per generation, P=4,096 | {rows['tf'][4096]['generation_seconds']:.2f} s | "
        f"{rows['jax'][4096]['generation_seconds']:.2f} s |",
        f"| peak memory, P=256 | {mib['tf'][256]} MiB | {mib['jax'][256]} MiB |",
        f"| peak memory, P=65,536 | {mib['tf'][65536]} MiB | {mib['jax'][65536]} MiB |",
        f"| whole generation vs plain inference, P=4,096 | "
        f"{tf['vs_inference_generation']:.2f}x | {jax['vs_inference_generation']:.2f}x |",
        f"| evaluation call vs plain inference, P=4,096 | {tf['vs_inference']:.2f}x | "
        f"{jax['vs_inference']:.2f}x |")
    assert_quotes(
        "benchmarks/README.md",
        f"| {tf['vs_inference_generation']:.2f}: missed | "
        f"{jax['vs_inference_generation']:.2f} (",
        f"| {ratio['tf']:.2f}: missed (43x before recipes) | {ratio['jax']:.2f}: missed",
        f"| rank 1, 256 | {rows['tf'][256]['generation_seconds']:.2f} "
        f"({rows['tf'][256]['eval_seconds']:.2f}) | {mib['tf'][256]} MiB |")
    for backend in ("tensorflow", "jax"):
        ga = hyperscale(backend, "ga")
        assert ga["ga_population_16384_ok"]
        assert f"| {ga['peak_bytes_ratio']['ga']['ratio']:.2f} at " in page("benchmarks/README.md")
    assert hyperscale("jax", "rank1_p262144")["population_262144_ok"]


def test_gymnax_cartpole_numbers():
    def per_seed(name, label, column, fmt):
        return ", ".join(fmt.format(v) for v in values(name, label, column))

    for label, strategy in (("ga", "GA(64, 8)"),
                            ("es", "OpenES(64, sigma 0.05, learning rate 0.03)")):
        held = per_seed("gymnax_cartpole", label, "heldout_return", "{:.0f}")
        wall = per_seed("gymnax_cartpole", label, "wall_seconds", "{:.1f}")
        assert_quotes("docs/results.md", f"| {strategy} | {held} | {wall} | "
                      f"{mean('gymnax_cartpole', label, 'env_steps'):,.0f} |")
        assert_quotes("docs/reinforcement_learning.md", f"| {strategy} | {held} | {wall} |")
        assert min(values("gymnax_cartpole", label, "heldout_return")) >= 475  # solved
    shortfall = min(values("gymnax_cartpole_100", "es", "heldout_return"))
    assert_quotes("docs/results.md", f"returned {shortfall:.1f} held-out")
    assert_quotes("docs/reinforcement_learning.md", f"ended at {shortfall:.1f}")


def test_cartpole_strategy_numbers():
    # Section 12: held-out returns from each run's evaluation.json, the first generation
    # whose mean returned at least 475 from its history.csv.
    rows = []
    for name, label, generations in (("cartpole_cma_es", "`CMAES` (sigma 0.5)", 30),
                                     ("cartpole_pgpe", "`PGPE` (sigma 0.5)", 80)):
        held_out, lowest, firsts = [], [], []
        for seed in range(3):
            run = RESULTS / name / "small" / f"seed_{seed}"
            evaluation = json.loads((run / "evaluation.json").read_text())
            held_out.append(f"{evaluation['mean_return']:.1f}")
            lowest.append(min(evaluation["returns"]))
            with open(run / "history.csv") as f:
                history = list(csv.DictReader(f))
            assert len(history) == generations
            firsts.append(next(r["epoch"] for r in history
                               if float(r["episode_return"]) >= 475))
            assert evaluation["mean_return"] >= 475
        rows.append(f"| {label} | {generations} | {' / '.join(held_out)} | "
                    f"{min(lowest):.1f} | {' / '.join(firsts)} |")
    assert_quotes("docs/results.md", *rows)


def test_halfcheetah_pgpe_against_openes_numbers():
    # Section 13: PGPE and OpenES on the same seeds, paired; per seed and means from
    # comparison.csv, each run's final return read back from its history.csv.
    name, generations = "halfcheetah_pgpe", HALFCHEETAH_PGPE_GENERATIONS
    for label in ("pgpe", "es"):
        for rows, final in zip(histories(name, label),
                               values(name, label, "final_episode_return")):
            assert len(rows) == generations
            assert float(rows[-1]["episode_return"]) == pytest.approx(final)
    quoted = []
    for column, what in (("heldout_return", "held-out return (5 episodes)"),
                         ("final_episode_return", "final return (training episodes)")):
        pgpe, es = values(name, "pgpe", column), values(name, "es", column)
        test = comparison.paired_significance(pgpe, es)
        ahead = sum(a > b for a, b in zip(pgpe, es))
        quoted.append(
            f"| {what} | {' / '.join(f'{v:,.1f}' for v in pgpe)} | {np.mean(pgpe):,.1f} | "
            f"{' / '.join(f'{v:,.1f}' for v in es)} | {np.mean(es):,.1f} | "
            f"{test['mean_difference']:,.1f} | {test['paired_p']:.3f} | {ahead} of 3 |")
        if column == "heldout_return":
            quoted.append(f"held-out return {np.mean(pgpe):,.1f} vs {np.mean(es):,.1f}, "
                          f"PGPE ahead on {ahead} of 3 seeds, paired t p = "
                          f"{test['paired_p']:.3f}")
    assert_quotes("docs/results.md", *quoted)


def test_pendulum_strategy_numbers():
    # Section 14: held-out returns from each run's evaluation.json, the best training
    # return of the mean from its history.csv, and how many runs reach the bar of -200
    # (this project's choice: gymnasium registers no reward threshold for Pendulum-v1).
    rows, reached = [], []
    for name, label, generations in (("pendulum_cma_es", "`CMAES` (sigma 0.5)", 80),
                                     ("pendulum_pgpe", "`PGPE` (sigma 0.5)", 80)):
        held_out, lowest, best = [], [], []
        count = 0
        for seed in range(3):
            run = RESULTS / name / "small" / f"seed_{seed}"
            evaluation = json.loads((run / "evaluation.json").read_text())
            assert evaluation["env"] == "Pendulum-v1" and evaluation["episodes"] == 20
            held_out.append(f"{evaluation['mean_return']:.1f}")
            lowest.append(min(evaluation["returns"]))
            count += evaluation["mean_return"] >= -200
            with open(run / "history.csv") as f:
                history = list(csv.DictReader(f))
            assert len(history) == generations
            top = max(history, key=lambda r: float(r["episode_return"]))
            best.append(f"{float(top['episode_return']):.1f} ({top['epoch']})")
        rows.append(f"| {label} | {generations} | {' / '.join(held_out)} | "
                    f"{min(lowest):.1f} | {' / '.join(best)} |")
        reached.append(count)
    assert_quotes("docs/results.md", *rows,
                  f"CMA-ES on {reached[0]} of 3 seeds, PGPE on {reached[1]} of 3")

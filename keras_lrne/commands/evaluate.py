"""`keras-lrne evaluate`: play a run's saved elite on held-out episodes."""

import json

from keras_lrne.commands.arguments import positive_int, seed

NAME = "evaluate"


def add_parser(commands, formatter_class):
    """Adds `evaluate` to the `commands` subparsers."""
    parser = commands.add_parser(
        NAME, help="play a run's elite on held-out episodes and write evaluation.json",
        formatter_class=formatter_class,
        description="Play the elite a keras-lrne atari|carracing|control run saved (or an "
        "exported policy) on held-out episodes: reset seeds the run never trained on "
        "(Atari: random no-op starts). A run's logged elite return is a maximum over the "
        "population on its training episodes, biased upwards by selection; this is the "
        "unbiased estimate. Writes DIR/evaluation.json.",
    )
    parser.add_argument("dir", metavar="DIR", help="a run's --output, or a policy directory")
    parser.add_argument("--episodes", type=positive_int, default=None,
                        help="held-out episodes (default: 30 for Atari, 20 for CarRacing, "
                        "10 for other environments)")
    parser.add_argument("--seed", type=seed, default=0,
                        help="evaluation seed: the same seed plays the same episodes")
    return parser


def run(args, argv=()):
    """Runs `keras-lrne evaluate`; returns the exit status."""
    from keras_lrne.playback import EVALUATION_FILE, evaluate

    result = evaluate(args.dir, episodes=args.episodes, seed=args.seed)
    line = (f"held-out return over {result['episodes']} episodes (seed {result['seed']}): "
            f"{result['mean_return']:.2f} ± {result['ci95_half_width']:.2f} (95% CI)")
    if "human_normalized_score" in result:
        line += f"; human-normalised {result['human_normalized_score']:.3f}"
    print(line, flush=True)
    print(json.dumps({k: result[k] for k in ("env", "episodes", "mean_return",
                                              "std_return")}), flush=True)
    print(f"[keras-lrne] wrote {EVALUATION_FILE}", flush=True)
    return 0

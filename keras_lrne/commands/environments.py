"""What the environment commands (`atari`, `carracing`, `control`) share: their common
options and one run of a policy evolved on an environment."""

import numpy as np

from keras_lrne.commands import arguments, compare, run_directory
from keras_lrne.commands.arguments import (
    VARIANTS,
    non_negative_int,
    paper,
    positive_float,
    positive_int,
)
from keras_lrne.commands.builders import make_strategy


def add_parser(commands, formatter_class, name, spec, first=None, extra=None):
    """Adds the environment command `name` to the `commands` subparsers.

    Args:
        commands: The subparsers action of the `keras-lrne` parser.
        formatter_class: The help formatter.
        name: The command's name.
        spec: The command's defaults: `help`, `rank`, `population`, `parents`,
            `generations`, `episodes`, `max_episode_steps`, and the paper's values
            `paper_rank`, `paper_population`, `paper_parents`, `paper_generations`
            (None or "-" where the paper has none).
        first: `first(parser)` adds the command's own leading options (the game or env).
        extra: `extra(parser)` adds the command's own options after the strategy's.

    Returns:
        The command's parser.
    """
    sub = commands.add_parser(name, help=spec["help"], description=spec["help"],
                              formatter_class=formatter_class)
    if first is not None:
        first(sub)
    sub.add_argument("--variant", choices=VARIANTS, default="factorized",
                     help="factorized (low-rank), full (same shape, unfactorized) or "
                     "small (narrow unfactorized baseline)")
    sub.add_argument("--rank", type=positive_int, default=spec["rank"],
                     help="factor rank" + paper(spec["paper_rank"]))
    sub.add_argument("--population", type=positive_int, default=spec["population"],
                     help="population size" + paper(spec["paper_population"]))
    sub.add_argument("--parents", type=positive_int, default=spec["parents"],
                     help="truncation size, survivors per generation"
                     + paper(spec["paper_parents"]))
    sub.add_argument("--generations", type=positive_int, default=spec["generations"],
                     help="generations" + paper(spec["paper_generations"]))
    sub.add_argument("--episodes", type=positive_int, default=spec["episodes"],
                     help="episodes per member per generation")
    steps = spec["max_episode_steps"]
    sub.add_argument("--max-episode-steps", type=positive_int, default=steps,
                     help="step cap per episode" + (
                         "" if steps else " (default: the environment's registered limit)"))
    sub.add_argument("--mutation-rate", type=positive_float, default=0.01,
                     help="relative mutation std of full tensors (factors use its "
                     "square root)")
    arguments.add_strategy_arguments(sub)
    if extra is not None:
        extra(sub)
    arguments.add_compare_arguments(sub)
    sub.add_argument("--eval-episodes", type=non_negative_int, default=None, metavar="N",
                     help="with --compare/--seeds: held-out episodes each run's final elite "
                     "plays (`keras-lrne evaluate`), reported beside the training returns. "
                     "Default: 30 for Atari, 20 for CarRacing, 10 otherwise; 0 skips it")
    arguments.add_run_arguments(sub, name)
    return sub


def run_once(args, make):
    """One environment run into `args.output`: `(summary, history dict)`.

    Args:
        args: The command's arguments (of one run).
        make: `make(args)` returns `(task, model)`.
    """
    import keras

    import keras_lrne

    output = args.output
    label = f"{args.command} {args.variant}"
    run_directory.make_output_dir(output)
    with run_directory.lock(output):
        mode = run_directory.prepare_output(args, output)
        if mode == "finished":
            return run_directory.load_finished(output, label, args)
        keras.utils.set_random_seed(args.seed)
        task, model = make(args)
        strategy = make_strategy(args)
        params = int(model.count_params())
        print(f"[keras-lrne] {label}: {params:,} parameters, {task!r}, {strategy}",
              flush=True)

        def summary_of(logs, generations, wall):
            summary = {
                "command": args.command, "variant": args.variant, "parameters": params,
                "generations": generations,
                "final_episode_return": logs["episode_return"][-1],
                "best_episode_return": max(logs["episode_return"]), "wall_seconds": wall,
                "evolution_seconds": float(sum(logs.get("generation_seconds", []))),
                "env_steps": int(sum(logs["env_steps"])),
                "early_termination_saved": float(np.mean(logs["early_termination_saved"])),
            }
            return summary, {"strategy": strategy.get_config(),
                             "task_state": task.get_state()}

        plot = ("return.png", f"keras-lrne {args.command} ({args.variant})",
                {"keys": ("episode_return", "mean_return"), "ylabel": "episode return"})
        policy = ("policy", lambda path: keras_lrne.export_policy(model, task, path))
        summary, history = run_directory.evolve_and_save(
            args, model, task, strategy, output, mode=mode, plot=plot,
            summary_of=summary_of, extra_outputs=[policy])
    logs = history.history
    print(f"[keras-lrne] {label}: {outcome(logs)} in {summary['generations']} generations "
          f"({summary['wall_seconds']:.1f} s); wrote {output}", flush=True)
    return summary, logs


def outcome(logs):
    """What a run's returns say, in words: the best elite return and the last
    generation's mean. Each generation plays new episodes (the elite's return is its
    best member's on them), so the last elite's return is no measure of progress; the
    held-out evaluation is (`keras-lrne evaluate`)."""
    text = f"best elite return {max(logs['episode_return']):.1f}"
    if logs.get("mean_return"):
        text += f", last generation's mean return {logs['mean_return'][-1]:.1f}"
    return text + " (training episodes)"


def run(args, argv, make):
    """Runs an environment command (one run, or a comparison); returns the exit status."""
    plan = compare.comparison_plan(args)
    if plan is None:
        run_once(args, make)
        return 0
    return compare.run_comparison(args, argv, plan, lambda run_args: run_once(run_args, make))

"""`keras-lrne carracing`: evolve the paper's CarRacing-v3 policy."""

from keras_lrne.commands import environments
from keras_lrne.commands.arguments import positive_int

NAME = "carracing"
SPEC = {
    "help": "evolve the paper's CarRacing-v3 policy (64x64 RGB, early termination)",
    "rank": 1, "population": 8, "parents": 2, "generations": 5, "episodes": 2,
    "max_episode_steps": 1000, "paper_rank": 1, "paper_population": 256,
    "paper_parents": 8, "paper_generations": 40,
}


def _two_stage(parser):
    parser.add_argument("--reevaluate-top", type=positive_int, default=None,
                        help="two-stage selection: re-evaluate the best N (paper: 32)")
    parser.add_argument("--reevaluate-episodes", type=positive_int, default=None,
                        help="episodes of the second stage (paper: 4)")


def add_parser(commands, formatter_class):
    """Adds `carracing` to the `commands` subparsers."""
    return environments.add_parser(commands, formatter_class, NAME, SPEC, extra=_two_stage)


def make_task_and_model(args):
    """The `CarRacing` task and the policy preset the arguments describe."""
    import keras_lrne

    task = keras_lrne.tasks.CarRacing(episodes=args.episodes,
                                      max_episode_steps=args.max_episode_steps,
                                      reevaluate_top=args.reevaluate_top,
                                      reevaluate_episodes=args.reevaluate_episodes)
    model = keras_lrne.presets.carracing_policy(args.variant, num_actions=task.num_outputs,
                                                rank=args.rank)
    return task, model


def run(args, argv):
    """Runs `keras-lrne carracing`; returns the exit status."""
    return environments.run(args, argv, make_task_and_model)

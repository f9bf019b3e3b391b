"""`keras-lrne atari`: evolve the paper's Atari policy (ale-py)."""

from keras_lrne.commands import environments

NAME = "atari"
SPEC = {
    "help": "evolve the paper's Atari policy (Nature-DQN on 84x84 RGB, 4-frame stack)",
    "rank": 4, "population": 16, "parents": 4, "generations": 10, "episodes": 1,
    "max_episode_steps": 2500, "paper_rank": 4, "paper_population": 512,
    "paper_parents": 16, "paper_generations": 300,
}


def _game(parser):
    parser.add_argument("--game", default="Frostbite",
                        help="Atari game, e.g. Frostbite, Pong (paper: Asteroids, "
                        "Frostbite, Gravitar, Kangaroo). Default: Frostbite")


def add_parser(commands, formatter_class):
    """Adds `atari` to the `commands` subparsers."""
    return environments.add_parser(commands, formatter_class, NAME, SPEC, first=_game)


def make_task_and_model(args):
    """The `Atari` task and the policy preset the arguments describe."""
    import keras_lrne

    task = keras_lrne.tasks.Atari(args.game, episodes=args.episodes,
                                  max_episode_steps=args.max_episode_steps)
    model = keras_lrne.presets.atari_policy(args.variant, num_actions=task.num_outputs,
                                            rank=args.rank)
    return task, model


def run(args, argv):
    """Runs `keras-lrne atari`; returns the exit status."""
    return environments.run(args, argv, make_task_and_model)

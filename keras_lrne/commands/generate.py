"""`keras-lrne generate`: sample text from an evolved language model."""

from keras_lrne.commands.arguments import number_type, positive_int, seed

NAME = "generate"

temperature = number_type(float, "a finite number >= 0", lambda v: 0 <= v < float("inf"))


def add_parser(commands, formatter_class):
    """Adds `generate` to the `commands` subparsers."""
    parser = commands.add_parser(
        NAME, help="sample text from an evolved language model",
        formatter_class=formatter_class,
        description="Continue a prompt with the language model of a `keras-lrne lm` run "
        "(its output directory holds model.keras and tokenizer.json).",
    )
    parser.add_argument("dir", metavar="DIR",
                        help="the --output directory of a keras-lrne lm run")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-tokens", type=positive_int, default=50,
                        help="tokens to generate")
    parser.add_argument("--temperature", type=temperature, default=1.0,
                        help="sampling temperature; 0 is greedy. Default: 1.0")
    parser.add_argument("--top-k", type=positive_int, default=None,
                        help="sample from the k most likely tokens only (default: all)")
    parser.add_argument("--seed", type=seed, default=0, help="sampling seed. Default: 0")
    return parser


def run(args, argv=()):
    """Runs `keras-lrne generate`; returns the exit status."""
    from keras_lrne.generation import generate_text, load_run

    model, kind, vocabulary = load_run(args.dir)
    text = generate_text(model, args.prompt, vocabulary, tokenizer=kind,
                         max_tokens=args.max_tokens, temperature=args.temperature,
                         top_k=args.top_k, seed=args.seed)
    sep = "" if kind == "character" else " "
    print(args.prompt + sep + text)
    return 0

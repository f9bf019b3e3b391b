"""The objects a command's arguments ask for: strategy and distribution."""


def make_distribution(args):
    """The `RayWorkers` (`--workers`, `--ray-address`) or `PopulationParallel`
    (`--devices`) the arguments ask for; None for this process on one device."""
    if args.workers is not None or args.ray_address is not None:
        if args.devices != 1:
            raise ValueError("--devices cannot be combined with --workers or --ray-address: "
                             f"choose one. Received: --devices {args.devices}")
        from keras_lrne.distribution import RayWorkers

        return RayWorkers(num_workers=args.workers, address=args.ray_address)
    if args.devices == 1:
        return None
    from keras_lrne.distribution import PopulationParallel

    try:
        return PopulationParallel(devices=None if args.devices == "all" else args.devices)
    except ValueError as error:
        raise ValueError(f"{error} (from --devices {args.devices})") from None


def make_strategy(args):
    """The strategy the command's arguments ask for."""
    from keras_lrne import strategies

    if args.strategy == "es":
        return strategies.OpenES(population_size=args.population, sigma=args.sigma,
                                 learning_rate=args.learning_rate)
    if args.strategy == "cma-es":
        return strategies.CMAES(population_size=args.population, sigma=args.sigma)
    if args.strategy == "sep-cma-es":
        return strategies.SepCMAES(population_size=args.population, sigma=args.sigma)
    if args.strategy == "snes":
        return strategies.SNES(population_size=args.population, sigma=args.sigma)
    if args.strategy == "pgpe":
        return strategies.PGPE(population_size=args.population, sigma=args.sigma)
    if args.strategy.startswith("evosax:"):
        return make_evosax(args.strategy, args.population)
    return strategies.GA(population_size=args.population, num_parents=args.parents,
                         mutation_rate=args.mutation_rate,
                         factor_mutation_rate=getattr(args, "factor_mutation_rate", None))


def make_evosax(text, population):
    """`--strategy evosax:NAME`: `keras_lrne.strategies.Evosax(NAME, population)`, or a
    `ValueError` naming the option on a backend other than JAX."""
    import keras

    from keras_lrne import strategies

    name = text.partition(":")[2]
    backend = keras.config.backend()
    if backend != "jax":
        raise ValueError(
            f"--strategy {text} runs evosax's {name}, which is written in JAX: it needs the "
            "JAX backend. Run with KERAS_BACKEND=jax (and the evosax extra: pip install "
            "\"keras-lrne[evosax]\"), or choose a native strategy (cma-es, sep-cma-es, "
            "snes, pgpe, es, ga), which run on every backend. Received: --strategy "
            f"{text} on the {backend!r} backend"
        )
    return strategies.Evosax(name, population_size=population)


def check_strategy(args):
    """Fails (a `ValueError` or `ImportError`) before a command writes anything when
    its `--strategy evosax:NAME` cannot run: another backend than JAX, evosax not
    installed, or no evosax algorithm NAME."""
    if str(getattr(args, "strategy", "")).startswith("evosax:"):
        make_evosax(args.strategy, args.population)

"""OpenAI's evolution strategy (Salimans et al., 2017) on every evolvable tensor."""

import dataclasses
import math
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_lrne import backend as lrne_backend
from keras_lrne import genome
from keras_lrne._validation import check_bool, check_int, check_number, warn_at_caller
from keras_lrne.strategies import operators
from keras_lrne.strategies.base import Strategy, as_specs, spec_signature, specs_of

FITNESS_SHAPINGS = ("centered_rank", "z_score", "none")
_NOISE_SALT = 1
#: Bytes of regenerated noise the update holds at once: its weighted sum runs over
#: chunks of seeds of at most this size, so a generation's memory does not grow with
#: the population. Populations whose noise fits are summed in one product, as before
#: chunking existed; larger ones are accumulated chunk by chunk, which rounds the sum
#: differently (by float32 rounding only).
UPDATE_BUDGET_BYTES = 16 * 2**20


@dataclasses.dataclass(frozen=True)
class OpenESConfig:
    population_size: int
    sigma: float = 0.02
    learning_rate: float = 0.01
    antithetic: bool = True
    fitness_shaping: str = "centered_rank"
    optimizer: object = "adam"
    weight_decay: float = 0.0
    mean_evaluation: bool = True
    perturbation_rank: int = None


class OpenESState(NamedTuple):
    """State of an `OpenES` run.

    Attributes:
        mean: list of tensors, the search distribution's mean (one per variable).
        optimizer_variables: the values of the optimizer's variables (tensors, in
            `optimizer.variables` order: iteration count, learning rate, moments...).
        elite: what `best` returns: the mean that was evaluated last generation (with
            `mean_evaluation`), else the best member of it.
        noise_seeds: the seeds of the population last asked (one per antithetic pair).
        weights: the shaped fitness weights of the last `tell`, one per member.
        signature: the `spec_signature` of the run's variables (what finds the run's
            compiled operators: the strategy object holds none).
        generation: number of completed `tell` calls.
        seed: the run seed.
        losses: the last losses (sanitised), or None.
        best_loss: best finite loss so far.
    """

    mean: list
    optimizer_variables: list
    elite: list
    noise_seeds: np.ndarray
    weights: np.ndarray
    signature: str
    generation: int
    seed: int
    losses: object
    best_loss: float


def shape_fitness(losses, method="centered_rank"):
    """Fitness weights from losses (higher loss, higher weight), as float32.

    `"centered_rank"`: ranks scaled to [-0.5, 0.5], tied losses sharing their mean rank
    (so equal losses, e.g. all-failed members, give no gradient); `"z_score"`:
    standardised losses; `"none"`: the losses themselves (clipped to float32). Non-finite
    losses rank last (`z_score` and `none` give them the worst finite loss).
    """
    losses = operators.sanitize_losses(losses)
    n = len(losses)
    if method == "centered_rank":
        if n == 1:
            return np.zeros(1, np.float32)
        ranks = np.empty(n)
        ranks[np.argsort(losses, kind="stable")] = np.arange(n)
        _, inverse, counts = np.unique(losses, return_inverse=True, return_counts=True)
        ranks = (np.bincount(inverse, weights=ranks) / counts)[inverse]
        return (ranks / (n - 1) - 0.5).astype(np.float32)
    finite = np.isfinite(losses)
    worst = losses[finite].max() if finite.any() else 0.0
    losses = np.where(finite, losses, worst)
    if method == "z_score":
        std = losses.std()
        return ((losses - losses.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    limit = np.finfo(np.float32).max
    return np.clip(losses, -limit, limit).astype(np.float32)


class OpenES(Strategy):
    """The evolution strategy of Salimans et al. (2017), "Evolution Strategies as a
    Scalable Alternative to Reinforcement Learning", on every evolvable tensor.

    The search distribution is a Gaussian around a mean: member `i` is
    `mean + sigma * init_std(tensor) * eps_i` on every tensor (low-rank factors included),
    where `eps_i` is regenerated from a per-member seed, never stored. With `antithetic`
    sampling members come in pairs `mean + e, mean - e`. The losses are turned into
    weights (`fitness_shaping`), the gradient of the expected loss is estimated as
    `sum_i w_i eps_i / (population_size * sigma)` in units of each tensor's init std, and a
    Keras optimizer takes a step on the mean in those units (so `learning_rate`, like
    `sigma`, is relative to each tensor's scale). `weight_decay` adds an L2 penalty on the
    mean to that gradient.

    With `mean_evaluation` (default) the mean itself is evaluated every generation (one
    extra member, `num_members = population_size + 1`, the last): it is what the model
    holds after the generation (`best`) and what `loss` logs, so after generation `g` the
    model holds the mean of population `g` (`model.rebuild_member(g, None)`), while
    the state's `mean` is already the updated, not yet evaluated, mean of population
    `g + 1`. The best member's loss is logged as `best_member_loss`; `mean_loss` and
    `median_loss` are over all evaluated members, the mean included. Without
    `mean_evaluation`, the model holds the generation's best member.

    Per generation the run records the noise seeds and the shaped weights
    (`record`), so the mean of any generation can be rebuilt from the run seed alone
    (`rebuild`, `model.rebuild_member`).

    Args:
        population_size: members sampled per generation (even with `antithetic`).
        sigma: noise standard deviation relative to each tensor's init std. Defaults to
            0.02.
        learning_rate: the optimizer's learning rate (when `optimizer` is a name).
            Defaults to 0.01.
        antithetic: mirrored sampling. Defaults to True.
        fitness_shaping: `"centered_rank"` (default), `"z_score"` or `"none"`.
        optimizer: `"adam"` (default), `"sgd"`, or a `keras.optimizers.Optimizer`
            instance (its own learning rate is used; each run uses a fresh copy).
        weight_decay: L2 coefficient on the mean (relative units). Defaults to 0.
        mean_evaluation: evaluate the mean every generation. Defaults to True.
        perturbation_rank: None (default) for full-rank noise; an integer `r` for
            low-rank noise (EGGROLL, Sarkar et al. 2025) on every variable with two or
            more dimensions: `eps_i = A_i @ transpose(B_i) / sqrt(r)` with `A_i`
            `(m, r)` and `B_i` `(n, r)` standard normal, regenerated from the member's
            seed (a convolution kernel's leading dimensions are the rows `m`). Each
            entry of `eps_i` has mean 0 and variance 1, and tends to a Gaussian as `r`
            grows. Vectors (biases, norms) keep full-rank noise; the update is the usual
            full-rank weighted sum. The population is never materialised: its members
            are `keras_lrne.genome.LowRankMembers`, and `Dense`, `EinsumDense`,
            `Embedding`, `Conv2D` and keras-lrne's `FactorizedDense` and
            `TiedEmbedding` compute `x @ mean` once for all members plus
            `(x @ A_i) @ transpose(B_i)` per member. Other layers get each member's
            weights materialised (correct, without the saving). A variable whose
            `min(m, n)` is below `r` gets rank `min(m, n)` (a larger rank spans nothing
            more and costs more than full-rank noise); one warning per run names them.

    Example:

    >>> strategy = keras_lrne.strategies.OpenES(population_size=64, sigma=0.02)
    >>> history = model.evolve(x, y, strategy=strategy, generations=50)
    """

    def __init__(self, population_size, sigma=0.02, learning_rate=0.01, antithetic=True,
                 fitness_shaping="centered_rank", optimizer="adam", weight_decay=0.0,
                 mean_evaluation=True, perturbation_rank=None):
        check_int("population_size", population_size, 2)
        sigma = check_number("sigma", sigma)
        learning_rate = check_number("learning_rate", learning_rate)
        antithetic = check_bool("antithetic", antithetic)
        if antithetic and population_size % 2:
            raise ValueError(
                "Received an invalid value for `population_size`, expected an even number "
                "with antithetic=True (members come in mirrored pairs). Received: "
                f"population_size={population_size}"
            )
        if fitness_shaping not in FITNESS_SHAPINGS:
            raise ValueError(
                "Received an invalid value for `fitness_shaping`, expected one of "
                f"{list(FITNESS_SHAPINGS)}. Received: fitness_shaping={fitness_shaping!r}"
            )
        weight_decay = check_number("weight_decay", weight_decay, allow_zero=True)
        mean_evaluation = check_bool("mean_evaluation", mean_evaluation)
        if perturbation_rank is not None:
            perturbation_rank = check_int("perturbation_rank", perturbation_rank, 1)
        super().__init__(OpenESConfig(
            population_size=int(population_size), sigma=sigma, learning_rate=learning_rate,
            antithetic=antithetic, fitness_shaping=fitness_shaping,
            optimizer=_serialize_optimizer(optimizer), weight_decay=weight_decay,
            mean_evaluation=mean_evaluation, perturbation_rank=perturbation_rank,
        ))

    @property
    def num_members(self):
        return self.population_size + int(self.config.mean_evaluation)

    @property
    def num_noise(self):
        """Noise vectors (seeds) per generation: one per antithetic pair."""
        p = self.population_size
        return p // 2 if self.config.antithetic else p

    # -- operators -------------------------------------------------------------------------
    def _make_optimizer(self, specs):
        spec = self.config.optimizer
        if isinstance(spec, str):
            optimizer = keras.optimizers.get(
                {"class_name": spec, "config": {"learning_rate": self.config.learning_rate}})
        else:
            optimizer = keras.optimizers.deserialize(spec)
        # The optimizer steps on variables in units of each tensor's init std.
        variables = [keras.Variable(np.zeros(s.shape, "float32"), trainable=True,
                                    name=f"z_{i}") for i, s in enumerate(specs)]
        optimizer.build(variables)
        return optimizer, variables

    def _noise_layout(self, specs):
        """Per spec `(shape, rows m, columns n, rank r or None)`: low-rank noise (`r`,
        `perturbation_rank` capped at `min(m, n)`) for tensors of 2+ dimensions when
        `perturbation_rank` is set, else full."""
        rank = self.config.perturbation_rank
        layout = []
        for s in specs:
            shape = tuple(s.shape)
            low = rank is not None and len(shape) >= 2
            m = int(np.prod(shape[:-1])) if shape else 1
            n = shape[-1] if shape else 1
            # A rank above min(m, n) spans no more and costs more: capped (see `_init`).
            layout.append((shape, m, n, min(rank, m, n) if low else None))
        return layout

    def _compile(self, specs, optimizer, variables):
        """The run's operators `(expand, perturb, update)`: `expand(mean, seeds, signs)`
        builds the members of those seeds and signs (traced by the engine inside its
        evaluation; sign 0 is the mean itself), `perturb` is it compiled, and `update`
        the compiled step of the mean."""
        bk = lrne_backend.get()
        stds = [float(s.init_std) for s in specs]
        layout = self._noise_layout(specs)
        # Numbers drawn per member and tensor: A and B for low-rank noise, else the tensor.
        sizes = [(m + n) * r if r else int(np.prod(shape)) for shape, m, n, r in layout]
        sigma = self.config.sigma
        noise_std = np.concatenate([np.full((n,), 1.0 if r else sigma * std, "float32")
                                    for n, std, (*_, r) in zip(sizes, stds, layout)])
        scale = 1.0 / (self.population_size * sigma)
        antithetic, decay = self.config.antithetic, self.config.weight_decay
        # Noise rows the update regenerates at once: one chunk (today's single product)
        # unless the rows of every seed would exceed the budget.
        chunk = max(1, UPDATE_BUDGET_BYTES // (4 * max(1, sum(sizes))))
        chunk = min(chunk, self.num_noise)

        def member_noise(seeds):
            """The one implementation of OpenES noise: row `i`, a standard normal over
            every evolved number (or every factor entry, with `perturbation_rank`),
            depends only on `seeds[i]` (members rebuild alone)."""
            return bk.seeded_normal(seeds, _NOISE_SALT, (sum(sizes),), "float32")

        def factors(piece, m, n, r):
            return (ops.reshape(piece[:, : m * r], (-1, m, r)),
                    ops.reshape(piece[:, m * r:], (-1, n, r)))

        def expand(mean, seeds, signs):
            noise = bk.barrier(member_noise(ops.cast(seeds, "int32")))
            noise = bk.barrier(noise * noise_std)
            signs = ops.cast(signs, "float32")
            is_mean = ops.equal(signs, 0.0)
            members, offset = [], 0
            for m_, (shape, m, n, r), size, std in zip(mean, layout, sizes, stds):
                piece = noise[:, offset: offset + size]
                offset += size
                if r:
                    left, right = factors(piece, m, n, r)
                    left = left * (signs * (sigma * std / math.sqrt(r)))[:, None, None]
                    right = right * ops.cast(~is_mean, right.dtype)[:, None, None]
                    members.append(genome.LowRankMembers(
                        m_, ops.cast(left, m_.dtype), ops.cast(right, m_.dtype)))
                else:
                    piece = ops.reshape(piece * signs[:, None], (-1, *shape))
                    keep = ops.reshape(is_mean, (-1,) + (1,) * len(shape))
                    members.append(ops.where(keep, m_[None],
                                             m_[None] + ops.cast(piece, m_.dtype)))
            return members

        def gradient(seeds, weights):
            """`[sum_i w_i eps_i]` per tensor (full rank; for low rank
            `sum_i w_i A_i B_i^T / sqrt(r)`), times `scale`."""
            eps = member_noise(seeds)
            flat = ops.matmul(weights[None, :], eps)[0] * scale
            grads, offset = [], 0
            for (shape, m, n, r), size in zip(layout, sizes):
                piece = eps[:, offset: offset + size]
                offset += size
                if r:  # sum_i w_i A_i B_i^T / sqrt(r), full rank
                    left, right = factors(piece, m, n, r)
                    grad = bk.weighted_outer_sum(weights, left, right)
                    grads.append(ops.reshape(grad * (scale / math.sqrt(r)), shape))
                else:
                    grads.append(ops.reshape(flat[offset - size: offset], shape))
            return grads

        def chunked_gradient(seeds, weights):
            """`gradient` accumulated over chunks of `chunk` seeds, so that the noise of
            all seeds never exists at once (padding seeds get weight 0)."""
            count = -(-int(seeds.shape[0]) // chunk)
            pad = count * chunk - int(seeds.shape[0])
            seeds = ops.concatenate([seeds, ops.zeros((pad,), seeds.dtype)], 0)
            weights = ops.concatenate([weights, ops.zeros((pad,), weights.dtype)], 0)
            seeds = ops.reshape(seeds, (count, chunk))
            weights = ops.reshape(weights, (count, chunk))

            def body(i, total):
                part = gradient(seeds[i], weights[i])
                return [a + b for a, b in zip(total, part)]

            zero = [ops.zeros(shape, "float32") for shape, *_ in layout]
            return bk.fold(body, count, zero)

        def update(mean, optimizer_values, seeds, weights):
            # The gradient of the expected loss in units of each tensor's init std,
            # estimated from the regenerated noise, then one optimizer step there.
            seeds = ops.cast(seeds, "int32")
            weights = ops.cast(weights, "float32")
            if antithetic:
                weights = weights[0::2] - weights[1::2]
            if int(seeds.shape[0]) <= chunk:
                grads = gradient(seeds, weights)
            else:
                grads = chunked_gradient(seeds, weights)
            z = [m / std for m, std in zip(mean, stds)]
            if decay:
                grads = [g + decay * zi for g, zi in zip(grads, z)]
            z, optimizer_values = bk.apply_optimizer(optimizer, variables, optimizer_values,
                                                     grads, z)
            return [zi * std for zi, std in zip(z, stds)], list(optimizer_values)

        return expand, bk.compile_random(expand), bk.compile_random(update)

    def member_seeds(self, noise_seeds):
        """Per member: its noise seed and sign (+1, or -1 for the mirrored twin)."""
        if self.config.antithetic:
            return (np.repeat(noise_seeds, 2).astype(np.int32),
                    np.tile(np.asarray([1, -1], np.int32), len(noise_seeds)))
        return noise_seeds.astype(np.int32), np.ones(len(noise_seeds), np.int32)

    def noise_seeds(self, seed, generation):
        """The generation's noise seeds (one per antithetic pair), from the run seed."""
        rng = operators.generation_rng(seed, generation, stream=2)
        return operators.child_seeds(rng, self.num_noise)

    def operators(self, specs, seed):
        """The compiled operators of a run and its starting point (also what Ray workers
        replay the run with).

        Returns:
            `((expand, perturb, update), mean, optimizer_values, optimizer)`:
            `expand(mean, seeds, signs)` builds members (traced inside the engine's
            evaluation), `perturb` is it compiled, `update(mean, optimizer_values,
            noise_seeds, weights)` steps the mean.
        """
        specs = as_specs(specs)
        operators_, initial_values, optimizer = self._operators(spec_signature(specs))
        mean = [ops.convert_to_tensor(v) for v in genome.initial_member(specs, seed, 0)]
        values = [ops.convert_to_tensor(v) for v in initial_values]
        # The optimizer object stays referenced by the compiled `update`.
        return operators_, mean, values, optimizer

    def _operators(self, signature):
        """`((expand, perturb, update), initial optimizer values, optimizer)` of the
        variables of `signature`, built once per configuration and signature (the
        compiled `update` loads the values it is given before each step, so runs that
        share it do not share optimizer state)."""
        def build():
            specs = specs_of(signature)
            optimizer, variables = self._make_optimizer(specs)
            operators_ = self._compile(specs, optimizer, variables)
            # Host copies of the fresh values: not the optimizer's variables (a compiled
            # `update` called with variables would be traced again once it is called
            # with its own outputs, and on TensorFlow they hold the last run's values).
            to_numpy = lrne_backend.get().to_numpy
            values = [np.array(to_numpy(v.value)) for v in optimizer.variables]
            return operators_, values, optimizer
        return self.cached("operators", build, signature)

    # -- the contract ------------------------------------------------------------------------
    def _init(self, specs, seed):
        rank = self.config.perturbation_rank
        capped = [f"{spec.path} {tuple(spec.shape)}: rank {r}"
                  for spec, (_, _, _, r) in zip(specs, self._noise_layout(specs))
                  if r is not None and r < rank]
        if capped:
            warn_at_caller(
                f"OpenES(perturbation_rank={rank}) is above min(m, n) of {len(capped)} "
                "variables (m rows, n columns): their noise uses rank min(m, n) instead, "
                "which already spans every direction a larger rank would (and costs less). "
                f"Capped: {'; '.join(capped)}",
                UserWarning,
            )
        _, mean, values, _ = self.operators(specs, seed)
        return OpenESState(
            mean=mean,
            optimizer_variables=values,
            elite=list(mean),
            noise_seeds=np.zeros((self.num_noise,), np.int32),
            weights=np.zeros((self.population_size,), np.float32),
            signature=spec_signature(specs),
            generation=0, seed=seed, losses=None, best_loss=math.inf,
        )

    def _ask(self, state):
        noise_seeds = self.noise_seeds(state.seed, state.generation)
        seeds, signs = self.member_seeds(noise_seeds)
        if self.config.mean_evaluation:  # the mean is the last member: sign 0
            seeds = np.append(seeds, np.int32(0)).astype(np.int32)
            signs = np.append(signs, np.int32(0)).astype(np.int32)
        expand = self._operators(state.signature)[0][0]
        recipe = genome.PopulationRecipe(expand, state.mean, (seeds, signs))
        return recipe, state._replace(noise_seeds=noise_seeds)

    def _tell(self, state, losses):
        _, perturb, update = self._operators(state.signature)[0]
        size = self.population_size
        members = losses[:size]
        weights = shape_fitness(members, self.config.fitness_shaping)
        logs = {"best_member_loss": float(members.min())}
        if self.config.mean_evaluation:
            elite = list(state.mean)
            logs["loss"] = float(losses[size])
        else:
            best = int(np.argmin(members))
            seeds, signs = self.member_seeds(state.noise_seeds)
            elite = [v[0] for v in genome.materialize(
                perturb(state.mean, seeds[best:best + 1], signs[best:best + 1]))]
            logs["loss"] = float(members[best])
        mean, values = update(state.mean, state.optimizer_variables, state.noise_seeds,
                              weights)
        return state._replace(mean=list(mean), optimizer_variables=list(values),
                              elite=elite, weights=weights), logs

    def _best(self, state):
        return state.elite

    def record(self, state):
        return {"noise_seeds": state.noise_seeds, "weights": state.weights}

    def rebuild(self, specs, seed, records, generation, member=None):
        """The mean of population `generation` (after `generation` updates), replayed
        from the initial mean (the run's first initial member) and the recorded seeds and
        weights; or, with an integer `member < population_size`, that member of it."""
        specs = as_specs(specs)
        (_, perturb, update), mean, values, _optimizer = self.operators(specs, seed)
        for g in range(generation):
            mean, values = update(mean, values,
                                  np.asarray(records["noise_seeds"][g], np.int32),
                                  np.asarray(records["weights"][g], np.float32))
        if member is not None and member < self.population_size:
            seeds, signs = self.member_seeds(self.noise_seeds(seed, generation))
            mean = [v[0] for v in genome.materialize(
                perturb(mean, seeds[member:member + 1], signs[member:member + 1]))]
        bk = lrne_backend.get()
        return [bk.to_numpy(v) for v in mean]


def _serialize_optimizer(optimizer):
    """A JSON-able description of `optimizer` (its name, or its Keras config)."""
    if isinstance(optimizer, str):
        try:
            keras.optimizers.get(optimizer)
        except ValueError:
            raise ValueError(
                "Received an invalid value for `optimizer`, expected 'adam', 'sgd' (or "
                "another Keras optimizer name) or a `keras.optimizers.Optimizer`. "
                f"Received: optimizer={optimizer!r}"
            ) from None
        return optimizer.lower()
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return keras.optimizers.serialize(optimizer)
    if isinstance(optimizer, dict):  # from get_config()
        return optimizer
    raise ValueError(
        "Received an invalid value for `optimizer`, expected 'adam', 'sgd' (or another "
        "Keras optimizer name) or a `keras.optimizers.Optimizer`. "
        f"Received: optimizer={optimizer!r}"
    )

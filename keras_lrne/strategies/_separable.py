"""What `SNES` and `PGPE` share: a Gaussian with a per-number standard deviation.

Both strategies search with `N(mean, diag(std^2))` over every evolvable number: member
`i` is `mean + sign_i * std * eps(seed_i)`, where `eps(seed)` is a standard normal over
all numbers regenerated from the member's seed and never stored. A population is a
`keras_lrne.genome.PopulationRecipe` whose shared weights are the mean and the std and
whose records are the members' `(seed, sign)`; sign 0 is the mean itself (evaluated as
the last member with `mean_evaluation`). Their updates only need, per tensor,
`sum_i a_i eps_i` and `sum_i b_i eps_i^2` for two weight vectors `a` and `b`, which
`Operators.moments` computes by regenerating the noise from the seeds, chunk by chunk.

The compiled operators of a run depend only on the variables' shapes, dtypes and init
stds (its "signature"), which the state carries, so they are cached per signature: the
strategy object holds configuration only, `ask` works on any state, and one object can
serve several runs.
"""

import math

import numpy as np
from keras import ops

from keras_lrne import backend as lrne_backend
from keras_lrne import genome
from keras_lrne.strategies import operators
from keras_lrne.strategies.base import Strategy, as_specs

#: Salt of the separable strategies' noise (OpenES uses 1): an `eps(seed)` of SNES or
#: PGPE is not the noise OpenES draws from the same seed.
NOISE_SALT = 3
#: Bytes of regenerated noise an update holds at once (as `open_es.UPDATE_BUDGET_BYTES`).
UPDATE_BUDGET_BYTES = 16 * 2**20


def signature(state):
    """`((shape, dtype), ...), (init_std, ...)` of a state's variables."""
    layout = tuple((tuple(int(d) for d in m.shape), str(m.dtype).split(".")[-1])
                   for m in state.mean)
    return layout, tuple(float(s) for s in np.asarray(state.scales).reshape(-1))


class Operators:
    """The compiled operators of one signature: `expand` (traced by the engine; also
    compiled as `perturb`) and `moments`, for a strategy's `update` to use.

    Args:
        layout: `((shape, dtype), ...)` of the evolvable variables.
        scales: each variable's init std.
        chunk_limit: the most seeds whose noise an update regenerates at once.
    """

    def __init__(self, layout, scales, chunk_limit):
        self.layout = layout
        self.scales = scales
        self.sizes = [int(np.prod(shape)) for shape, _ in layout]
        self.total = sum(self.sizes)
        budget = max(1, UPDATE_BUDGET_BYTES // (4 * max(1, self.total)))
        self.chunk = max(1, min(budget, chunk_limit))
        self.expand = self._make_expand()
        self.perturb = lrne_backend.get().compile_random(self.expand)

    def noise(self, seeds):
        """`(len(seeds), total)` standard normal noise, row `i` from `seeds[i]` alone."""
        return lrne_backend.get().seeded_normal(ops.cast(seeds, "int32"), NOISE_SALT,
                                                (self.total,), "float32")

    def split(self, flat):
        """A flat `(total,)` vector as one tensor per variable."""
        pieces, offset = [], 0
        for (shape, _), size in zip(self.layout, self.sizes):
            pieces.append(ops.reshape(flat[offset: offset + size], shape))
            offset += size
        return pieces

    def _make_expand(self):
        bk = lrne_backend.get()
        layout, sizes = self.layout, self.sizes
        count = len(layout)

        def expand(shared, seeds, signs):
            """Members `mean + sign * std * eps(seed)` (sign 0: the mean itself)."""
            means, stds = shared[:count], shared[count:]
            noise = bk.barrier(self.noise(seeds))
            signs = ops.cast(signs, "float32")
            is_mean = ops.equal(signs, 0.0)
            members, offset = [], 0
            for mean, std, (shape, _), size in zip(means, stds, layout, sizes):
                piece = ops.reshape(noise[:, offset: offset + size], (-1, *shape))
                offset += size
                piece = bk.barrier(piece * ops.cast(std, "float32")[None])
                piece = piece * ops.reshape(signs, (-1,) + (1,) * len(shape))
                keep = ops.reshape(is_mean, (-1,) + (1,) * len(shape))
                members.append(ops.where(keep, mean[None],
                                         mean[None] + ops.cast(piece, mean.dtype)))
            return members

        return expand

    def moments(self, seeds, first_weights, second_weights):
        """`(sum_i a_i eps_i, sum_i b_i eps_i^2)` as flat `(total,)` vectors, for
        `a = first_weights` and `b = second_weights` (one per seed), accumulated over
        chunks of at most `chunk` seeds (padding seeds get weight 0)."""
        seeds = ops.cast(seeds, "int32")
        first_weights = ops.cast(first_weights, "float32")
        second_weights = ops.cast(second_weights, "float32")

        def part(seeds, a, b):
            eps = self.noise(seeds)
            return (ops.matmul(a[None, :], eps)[0],
                    ops.matmul(b[None, :], ops.square(eps))[0])

        size = int(seeds.shape[0])
        if size <= self.chunk:
            return part(seeds, first_weights, second_weights)
        chunk = self.chunk
        count = -(-size // chunk)
        pad = count * chunk - size

        def padded(values):
            values = ops.concatenate([values, ops.zeros((pad,), values.dtype)], 0)
            return ops.reshape(values, (count, chunk))

        seeds, a, b = padded(seeds), padded(first_weights), padded(second_weights)

        def body(i, total):
            one, two = part(seeds[i], a[i], b[i])
            return [total[0] + one, total[1] + two]

        zero = ops.zeros((self.total,), "float32")
        first, second = lrne_backend.get().fold(body, count, [zero, zero])
        return first, second


class SeparableGaussian(Strategy):
    """Base of `SNES` and `PGPE` (see the module docstring). Subclasses define
    `num_noise`, `member_seeds`, `_state_type`, `_shape_weights(losses)`,
    `_initial_extra(ops, update)` (the initial `optimizer_variables`) and
    `_make_update(ops)`: a compiled `update(mean, std, extra, noise_seeds, weights) ->
    (mean, std, extra)`."""

    _DEFAULT_POPULATION = None  # a function of the number of evolvable numbers, or None

    def __init__(self, config):
        super().__init__(config)
        self._resolved_size = None

    # -- population size -------------------------------------------------------------------
    @property
    def population_size(self):
        size = self.config.population_size
        if size is not None:
            return size
        if self._resolved_size is None:
            raise RuntimeError(
                f"{type(self).__name__}(population_size=None) takes its default size from "
                "the number of evolvable numbers, known once `init()` (or `resolve()`) "
                "has seen the variables (`model.evolve()` resolves it). Before that, "
                "`num_members_for(specs)` gives the member count, and "
                "`keras_lrne.strategies.snes.default_population_size(n)` the size."
            )
        return self._resolved_size

    @property
    def num_members(self):
        return self.population_size + int(self.config.mean_evaluation)

    def num_members_for(self, specs):
        size = self.config.population_size
        if size is None:
            n = sum(int(np.prod(spec.shape)) for spec in as_specs(specs))
            size = self._DEFAULT_POPULATION(n)
        return size + int(self.config.mean_evaluation)

    def resolve(self, specs):
        """Fixes the default population size (`population_size=None`) from `specs`,
        the evolvable variables (what `init` does first)."""
        specs = as_specs(specs)
        if self.config.population_size is None:
            n = sum(int(np.prod(s.shape)) for s in specs)
            self._resolved_size = self._DEFAULT_POPULATION(n)

    # -- operators, cached per signature ---------------------------------------------------
    def _operators(self, key):
        cache = self.__dict__.setdefault("_cache", {})
        entry = cache.get(key)
        if entry is None:
            layout, scales = key
            ops_ = Operators(layout, scales, self.num_noise)
            entry = cache[key] = (ops_, self._make_update(ops_))
        return entry

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_cache", None)  # compiled functions: rebuilt where they are used
        return state

    def noise_seeds(self, seed, generation):
        """The generation's noise seeds, from the run seed."""
        rng = operators.generation_rng(seed, generation, stream=2)
        return operators.child_seeds(rng, self.num_noise)

    def _records(self, seeds, signs):
        if self.config.mean_evaluation:  # the mean is the last member: sign 0
            seeds = np.append(seeds, np.int32(0)).astype(np.int32)
            signs = np.append(signs, np.int32(0)).astype(np.int32)
        return seeds, signs

    # -- the contract ------------------------------------------------------------------------
    def _init(self, specs, seed, start=None):
        self.resolve(specs)
        if start is None:  # without a model: the run's first initial member
            start = genome.initial_member(specs, seed, 0)
        mean = [ops.convert_to_tensor(np.asarray(v, s.dtype)) for v, s in zip(start, specs)]
        scales = np.asarray([float(s.init_std) for s in specs], np.float64)
        std = [ops.convert_to_tensor(np.full(s.shape, self.config.sigma * s.init_std,
                                             "float32")) for s in specs]
        state = self._state_type(
            mean=mean, std=std, optimizer_variables=[], elite=list(mean),
            noise_seeds=np.zeros((self.num_noise,), np.int32),
            weights=np.zeros((self.population_size,), np.float32), scales=scales,
            generation=0, seed=seed, losses=None, best_loss=math.inf)
        ops_, update = self._operators(signature(state))
        return state._replace(optimizer_variables=self._initial_extra(ops_, update))

    def _ask(self, state):
        ops_, _ = self._operators(signature(state))
        noise_seeds = self.noise_seeds(state.seed, state.generation)
        seeds, signs = self._records(*self.member_seeds(noise_seeds))
        recipe = genome.PopulationRecipe(ops_.expand, list(state.mean) + list(state.std),
                                         (seeds, signs))
        return recipe, state._replace(noise_seeds=noise_seeds)

    def _tell(self, state, losses):
        ops_, update = self._operators(signature(state))
        size = self.population_size
        members = losses[:size]
        weights = self._shape_weights(members)
        logs = {"best_member_loss": float(members.min())}
        if self.config.mean_evaluation:
            elite = list(state.mean)
            logs["loss"] = float(losses[size])
        else:
            best = int(np.argmin(members))
            seeds, signs = self.member_seeds(state.noise_seeds)
            elite = [v[0] for v in ops_.perturb(list(state.mean) + list(state.std),
                                                seeds[best:best + 1], signs[best:best + 1])]
            logs["loss"] = float(members[best])
        mean, std, extra = update(list(state.mean), list(state.std),
                                  list(state.optimizer_variables), state.noise_seeds, weights)
        return state._replace(mean=list(mean), std=list(std), optimizer_variables=list(extra),
                              elite=elite, weights=weights), logs

    def _best(self, state):
        return state.elite

    def record(self, state):
        return {"noise_seeds": state.noise_seeds, "weights": state.weights}

    def replay(self, state, noise_seeds, weights):
        """`state` after the update of one generation whose noise seeds and shaped
        weights are given (what `rebuild` and Ray workers replay a run with)."""
        _, update = self._operators(signature(state))
        mean, std, extra = update(list(state.mean), list(state.std),
                                  list(state.optimizer_variables),
                                  np.asarray(noise_seeds, np.int32),
                                  np.asarray(weights, np.float32))
        return state._replace(mean=list(mean), std=list(std), optimizer_variables=list(extra))

    def members_of(self, state, generation, members):
        """Members `members` (indices; `population_size` is the mean) of population
        `generation`, whose distribution `state` holds: one `(len(members), *shape)`
        tensor per variable."""
        ops_, _ = self._operators(signature(state))
        seeds, signs = self.member_seeds(self.noise_seeds(state.seed, generation))
        members = np.asarray(members, np.int32).reshape(-1)
        size = self.population_size
        inside = np.minimum(members, size - 1)
        signs = np.where(members < size, signs[inside], 0).astype(np.int32)
        return list(ops_.perturb(list(state.mean) + list(state.std), seeds[inside], signs))

    def rebuild(self, specs, seed, records, generation, member=None, start=None):
        """The mean of population `generation` (after `generation` updates), replayed
        from the initial mean (`start`, the run's starting weights: `Lineage.start`)
        and the recorded seeds and weights; or, with an integer
        `member < population_size`, that member of it."""
        state = self.init(specs, seed, start=start)
        for g in range(generation):
            state = self.replay(state, records["noise_seeds"][g], records["weights"][g])
        values = list(state.mean)
        if member is not None and member < self.population_size:
            values = [v[0] for v in self.members_of(state, generation, [member])]
        bk = lrne_backend.get()
        return [bk.to_numpy(v) for v in values]

    def worker_protocol(self):
        """How Ray workers rebuild this strategy's members from seeds."""
        from keras_lrne.distribution.worker_protocol import WorkerProtocol

        strategy = self

        class SeparableProtocol(WorkerProtocol):
            """A worker holds the distribution (mean, std, optimizer values) and replays
            each generation's update from its noise seeds and shaped weights."""

            def worker_init(self, specs, seed, start=None):
                return strategy.init(specs, seed, start=start)

            def sync_payload(self, records, generation):
                g = generation - 1
                return (np.asarray(records["noise_seeds"][g]),
                        np.asarray(records["weights"][g]))

            def worker_sync(self, worker_state, payload):
                return strategy.replay(worker_state, *payload)

            def member_payload(self, records, generation, members):
                return (int(generation), np.asarray(members, np.int32))

            def worker_members(self, worker_state, payload):
                generation, members = payload
                return strategy.members_of(worker_state, generation, members)

        return SeparableProtocol(self)

    # -- to implement ----------------------------------------------------------------------
    @property
    def num_noise(self):
        raise NotImplementedError

    def member_seeds(self, noise_seeds):
        raise NotImplementedError

    def _shape_weights(self, losses):
        raise NotImplementedError

    def _initial_extra(self, ops_, update):
        return []

    def _make_update(self, ops_):
        raise NotImplementedError


def tied_mean(values, losses):
    """`values` (one per member) averaged over members with equal losses, so that tied
    losses (e.g. every member failed) give no gradient."""
    _, inverse, counts = np.unique(losses, return_inverse=True, return_counts=True)
    if len(counts) == 1:  # all tied: exactly no gradient (not a rounding residue)
        return np.zeros(len(values))
    return (np.bincount(inverse, weights=values) / counts)[inverse]

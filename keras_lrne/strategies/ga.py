"""The paper's genetic algorithm (truncation selection, elitism, Gaussian mutation)."""

import dataclasses
import math
from typing import NamedTuple

import numpy as np
from keras import ops

from keras_lrne import backend as lrne_backend
from keras_lrne import genome
from keras_lrne._validation import check_int, check_number
from keras_lrne.strategies import operators
from keras_lrne.strategies.base import Strategy, as_specs, spec_signature, specs_of

#: From this population size on, each chunk of the initial population is drawn with one
#: compiled draw per variable (`genome.initial_members`: about 9x faster per member on a
#: 2-core CPU once compiled, which costs 10-30 s), else member by member. The numbers
#: are the same either way.
VECTORISED_INITIAL_POPULATION = 1024


@dataclasses.dataclass(frozen=True)
class GAConfig:
    population_size: int
    num_parents: int
    mutation_rate: float = 0.01
    factor_mutation_rate: float = None


class GAState(NamedTuple):
    """State of a `GA` run.

    A population is never held as weights: population 0 is `population_size`
    independent initialisations (drawn from the run seed), and every later population
    is its survivors plus, per member, the position of its parent among them and a
    mutation seed (`ask` returns it as a `keras_lrne.genome.PopulationRecipe`).

    Attributes:
        signature: the `spec_signature` of the run's variables (what finds the run's
            specs and compiled operators: the strategy object holds none).
        survivors: list of `(num_parents, ...)` tensors, one per evolvable variable:
            the survivors of the last `tell`, best first (None before the first).
        sources: for each member of the next population, the position among
            `survivors` of the member it is made from (its own index in the initial
            population before the first `tell`).
        generation: number of completed `tell` calls.
        seed: the run seed.
        losses: the last evaluated losses (sanitised, float64), or None.
        best_loss: best finite loss seen so far (inf before any).
        parents: for each member of the next population, the index of the member of
            the previous population it was made from (its own index in the initial
            population).
        seeds: for each member, the mutation seed applied to its parent, or -1 when it
            passed unchanged (survivors and initial members).
    """

    survivors: list
    sources: np.ndarray
    signature: str
    generation: int
    seed: int
    losses: object
    best_loss: float
    parents: np.ndarray
    seeds: np.ndarray


class GA(Strategy):
    """The genetic algorithm of Such et al. (2017) as used by the paper.

    "Low Rank Factorizations are Indirect Encodings for Deep Neuroevolution"
    (Garbus & Pollack, 2025). Each generation, the `num_parents` members with the lowest
    loss survive unchanged and are re-evaluated next generation (elitism); the other
    `population_size - num_parents` members are clones of survivors chosen uniformly at
    random, each mutated by Gaussian noise on every evolvable tensor with standard
    deviation `mutation_rate * init_std(tensor)`, where factor tensors (low-rank U and V)
    use `factor_mutation_rate` (default `sqrt(mutation_rate)`, 0.1 for the paper's 0.01).
    The initial population is `population_size` independent random initialisations.
    There is no crossover. NaN or infinite losses count as the worst. Every member is
    recorded as (parent index, seed), so any member can be rebuilt from the run seed and
    its chain (`model.rebuild_member`). After each generation the model holds the best
    survivor.

    A member is its recipe: `ask` returns the survivors and each member's (parent
    position, seed) as a `keras_lrne.genome.PopulationRecipe`, and the engine builds
    each chunk of children inside its compiled evaluation, so memory does not grow with
    the population beyond those records.

    (Normalization layers are frozen by `evolve(freeze_normalization=True)`; the paper's
    two-stage selection is a task setting, e.g. `CarRacing(reevaluate_top=...)`.)

    Args:
        population_size: number of members per generation, at least `num_parents + 1`.
            The paper used 512 (256 for CarRacing).
        num_parents: truncation size T, the survivors per generation. The paper used 16.
        mutation_rate: relative mutation strength of full tensors. Defaults to 0.01.
        factor_mutation_rate: relative mutation strength of factor tensors. Defaults to
            `sqrt(mutation_rate)`.

    Example:

    >>> strategy = keras_lrne.strategies.GA(population_size=64, num_parents=8)
    >>> history = model.evolve(x, y, strategy=strategy, generations=10)
    """

    def __init__(self, population_size, num_parents, mutation_rate=0.01,
                 factor_mutation_rate=None):
        check_int("population_size", population_size, 2)
        check_int("num_parents", num_parents, 1)
        if population_size < num_parents + 1:
            raise ValueError(
                "Received an invalid value for `population_size`, expected at least "
                f"num_parents + 1 = {num_parents + 1} so that there is room for children. "
                f"Received: population_size={population_size}, num_parents={num_parents}"
            )
        check_number("mutation_rate", mutation_rate)
        if factor_mutation_rate is not None:
            check_number("factor_mutation_rate", factor_mutation_rate)
        super().__init__(
            GAConfig(
                population_size=int(population_size),
                num_parents=int(num_parents),
                mutation_rate=float(mutation_rate),
                factor_mutation_rate=(
                    None if factor_mutation_rate is None else float(factor_mutation_rate)
                ),
            )
        )

    @property
    def trace_counts(self):
        """Traces of the compiled operators of this configuration, over all its runs (a
        run traces each once)."""
        return self.cached("trace_counts", lambda: {"reproduce": 0})

    @property
    def num_parents(self):
        return self.config.num_parents

    @property
    def selects_by_truncation(self):
        """True: only the `num_parents` best members survive and make children."""
        return True

    @property
    def mutation_rate(self):
        return self.config.mutation_rate

    @property
    def factor_mutation_rate(self):
        rate = self.config.factor_mutation_rate
        return math.sqrt(self.config.mutation_rate) if rate is None else rate

    def noise_stds(self, specs):
        """Per evolvable variable spec, the std of the mutation noise."""
        return [
            (self.factor_mutation_rate if s.factor else self.mutation_rate) * s.init_std
            for s in as_specs(specs)
        ]

    def _member_builder(self, stds):
        """`members(survivors, source, row_seeds)`: row `i` is `survivors[source[i]]`,
        plus the noise of `row_seeds[i]` unless it is negative. The one implementation
        of a GA row: the engine's expansion of each chunk, the survivors of `tell`, Ray
        workers' members and `rebuild` all build rows with it. Row `i`'s noise depends
        only on `row_seeds[i]`, so any member can be re-created alone."""
        bk = lrne_backend.get()

        def members(survivors, source, row_seeds):
            source = ops.cast(source, "int32")
            row_seeds = ops.cast(row_seeds, "int32")
            shapes = [tuple(v.shape[1:]) for v in survivors]
            sizes = [int(np.prod(shape)) for shape in shapes]
            noise = bk.barrier(bk.seeded_normal(ops.maximum(row_seeds, 0), 0,
                                                (sum(sizes),), "float32"))
            noise = bk.barrier(noise * stds)
            unchanged = row_seeds < 0
            new, offset = [], 0
            for values, shape, size in zip(survivors, shapes, sizes):
                piece = ops.reshape(noise[:, offset: offset + size], (-1, *shape))
                offset += size
                base = ops.take(values, source, axis=0)
                keep = ops.reshape(unchanged, (-1,) + (1,) * len(shape))
                new.append(ops.where(keep, base, base + ops.cast(piece, values.dtype)))
            return new
        return members

    def _stds(self, specs):
        return np.concatenate([np.full((int(np.prod(s.shape)),), std, "float32")
                               for s, std in zip(specs, self.noise_stds(specs))])

    # -- rows, for Ray workers (`keras_lrne.distribution.worker_protocol`) ------------------
    def row_builder(self, specs):
        """The (uncompiled) GA row operator of `specs`: `members(survivors, source,
        row_seeds)` (see `_member_builder`), what every GA member is built with."""
        return self._member_builder(self._stds(as_specs(specs)))

    def row_sources(self, parents, seeds, rows):
        """`(positions among the survivors, seeds)` of `rows` of the population that
        `parents` / `seeds` (one lineage record) describe: survivors have seed -1."""
        parents, seeds = np.asarray(parents), np.asarray(seeds)
        rows = np.asarray(rows, np.int64)
        survivor_parents = parents[: self.num_parents]
        position = np.argmax(parents[rows][:, None] == survivor_parents[None, :], axis=1)
        source = np.where(rows < self.num_parents, rows, position).astype(np.int32)
        row_seeds = np.where(rows < self.num_parents, -1, seeds[rows]).astype(np.int32)
        return source, row_seeds

    def _operators(self, signature):
        """The `(rows, expand)` of the variables of `signature`, built once per
        configuration and signature: the compiled row operator and the expansion of a
        recipe's chunk (traced by the engine)."""
        return self.cached("operators", lambda: self._build_operators(specs_of(signature)),
                           signature)

    def _build_operators(self, specs):
        builder = self._member_builder(self._stds(specs))
        counts = self.trace_counts

        def expand(survivors, source, row_seeds):
            counts["reproduce"] += 1
            return builder(survivors, source, row_seeds)

        return lrne_backend.get().compile_random(builder), expand

    def _initial(self, state):
        """The host expansion of members of the initial population of `state`'s run."""
        specs, seed = specs_of(state.signature), state.seed
        vectorised = self.population_size >= VECTORISED_INITIAL_POPULATION

        def initial(shared, members):
            if vectorised:  # one draw per variable for the chunk: same numbers
                return [ops.convert_to_tensor(v)
                        for v in genome.initial_members(specs, seed, members)]
            values = [genome.initial_member(specs, seed, int(m)) for m in np.asarray(members)]
            return [ops.convert_to_tensor(np.stack([v[j] for v in values]))
                    for j in range(len(values[0]))]

        return initial

    def _init(self, specs, seed):
        signature = spec_signature(specs)
        self._operators(signature)  # compiled once per signature, before the first ask
        size = self.population_size
        index = np.arange(size, dtype=np.int32)
        return GAState(
            survivors=None,
            sources=index,
            signature=signature,
            generation=0,
            seed=seed,
            losses=None,
            best_loss=math.inf,
            parents=index,
            seeds=np.full((size,), -1, np.int32),
        )

    def _recipe(self, state):
        if state.survivors is None:  # population 0: independent initialisations
            return genome.PopulationRecipe(self._initial(state), [], (state.sources,),
                                           host=True)
        _, expand = self._operators(state.signature)
        return genome.PopulationRecipe(expand, state.survivors,
                                       (state.sources, state.seeds))

    def _ask(self, state):
        return self._recipe(state), state

    def _tell(self, state, losses):
        size, num_parents = self.population_size, self.num_parents
        rng = operators.generation_rng(state.seed, state.generation)
        elites = operators.truncation_selection(losses, num_parents)
        parents = operators.uniform_parents(rng, elites, size - num_parents)
        seeds = operators.child_seeds(rng, size - num_parents)
        # The survivors are the elites' rows as they were evaluated; each child is its
        # parent's row (a position among them) plus the noise of its seed.
        recipe = self._recipe(state)
        if recipe.host:
            survivors = recipe.rows(elites)
        else:
            rows, _ = self._operators(state.signature)
            survivors = rows(state.survivors, state.sources[elites],
                                   state.seeds[elites])
        position = np.argmax(parents[:, None] == elites[None, :], axis=1)
        state = state._replace(
            survivors=list(survivors),
            sources=np.concatenate([np.arange(num_parents),
                                    position]).astype(np.int32),
            parents=np.concatenate([elites, parents]).astype(np.int32),
            seeds=np.concatenate([np.full((num_parents,), -1, np.int32), seeds]),
        )
        return state, {"loss": float(losses[elites[0]])}

    def _best(self, state):
        if state.survivors is None:  # before the first `tell`: the first member
            return [v[0] for v in self._recipe(state).rows([0])]
        return [v[0] for v in state.survivors]

    def record(self, state):
        return {"parents": state.parents, "seeds": state.seeds}

    def rebuild(self, specs, seed, records, generation, member):
        """Member `member` of population `generation`: its initial member, then the
        mutation seeds of its chain of parents (bit-exact on one backend)."""
        if member is None:
            raise ValueError(
                "Received an invalid value for `member`, expected a member index: a GA "
                "run has no mean to rebuild. Received: member=None"
            )
        specs = as_specs(specs)
        root, chain = chain_of(records["parents"], records["seeds"], generation, member)
        rows, _ = self._operators(spec_signature(specs))
        values = [ops.convert_to_tensor(v[None]) for v in genome.initial_member(specs, seed, root)]
        zero = np.zeros((1,), np.int32)
        for child_seed in chain:
            values = rows(values, zero, np.asarray([child_seed], np.int32))
        bk = lrne_backend.get()
        return [bk.to_numpy(v)[0] for v in values]


def chain_of(parents, seeds, generation, member):
    """Returns `(initial_member, seeds)`: the root of member `member` of population
    `generation` and the mutation seeds applied along its chain, in order."""
    chain = []
    for g in range(generation - 1, -1, -1):
        seed = int(seeds[g][member])
        if seed >= 0:
            chain.append(seed)
        member = int(parents[g][member])
    return member, chain[::-1]

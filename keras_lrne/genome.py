"""What a member is: the evolvable variables of a model, and members drawn from a seed.

`collect_variable_specs(model)` describes every trainable variable of a built model as a
`VariableSpec` (shape, dtype, the std of its initializer, whether it is a low-rank factor,
whether it evolves). `initial_member(specs, seed, member)` draws one member's initial
values from `(seed, member)` alone, so any member of any run can be re-created by itself:
this is what strategies, Ray workers and lineage files rebuild members from.

Strategies (built-in and your own) import this module; it imports neither the engine nor
the compiled population functions (`keras_lrne.population`).

Example:

>>> import keras
>>> from keras_lrne import genome
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
>>> specs = genome.collect_variable_specs(model)
>>> [(s.path, s.shape) for s in specs]
[('sequential/dense/kernel', (3, 2)), ('sequential/dense/bias', (2,))]
>>> [v.shape for v in genome.initial_member(specs, seed=0, member=5)]
[(3, 2), (2,)]
"""

import dataclasses
import math
import weakref
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_lrne.layers._init import initializer_std, kaiming_std

NORMALIZATION_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in (
        "LayerNormalization",
        "BatchNormalization",
        "GroupNormalization",
        "RMSNormalization",
        "UnitNormalization",
        "SpectralNormalization",
    )
    if hasattr(keras.layers, name)
)


@dataclasses.dataclass(frozen=True)
class VariableSpec:
    """How one trainable variable takes part in evolution.

    Args:
        index: position in `model.trainable_variables`.
        path: the variable's path, e.g. `"block_0/attention/query/kernel_u"`.
        shape: the variable's shape (without population axis).
        dtype: the variable's dtype.
        init_std: standard deviation of its initial distribution; mutation noise is
            `mutation_rate * init_std` (`sqrt(mutation_rate)` for factors).
        factor: whether the variable is a low-rank factor (U or V).
        evolvable: False for frozen variables (normalization layers by default).
            initializer: the Keras initializer that draws initial members, or None for
            `N(0, init_std)`.
        lora: whether the variable is a factor of a Keras LoRA adapter
            (`lora_kernel_a`, `lora_kernel_b`, `lora_embeddings_a`, ...). Every member
            starts from the same adapter: its `_a` factor drawn from the run seed, its
            `_b` factor zero, so every initial member computes the pretrained model.
    """

    index: int
    path: str
    shape: tuple
    dtype: str
    init_std: float
    factor: bool
    evolvable: bool
    initializer: object = None
    lora: bool = False


def _resolve_initializer(layer, name):
    value = getattr(layer, f"{name}_initializer", None)
    if value is None or (isinstance(value, str) and value == "auto"):
        return None
    try:
        return keras.initializers.get(value)
    except (ValueError, TypeError):
        return None


def _is_constant_initializer(initializer):
    return isinstance(
        initializer,
        (keras.initializers.Zeros, keras.initializers.Ones, keras.initializers.Constant),
    )


def _reseed(initializer, seed):
    """A copy of `initializer` drawing deterministically from the integer `seed`."""
    if initializer is None or _is_constant_initializer(initializer):
        return initializer
    config = initializer.get_config()
    if "seed" not in config:
        return initializer
    config["seed"] = int(seed)
    return initializer.__class__.from_config(config)


def variable_owners(model):
    """Maps id(variable) -> (deepest layer owning it, its short name)."""
    owners = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for variable in layer.trainable_weights:
            owners[id(variable)] = layer
    return owners


def collect_variable_specs(model, freeze_normalization=True):
    """Describes every trainable variable of a built model (see `VariableSpec`).

    Layers may implement `evolution_info()` returning
    `{variable_name: {"init_std": float, "factor": bool}}` for the variables they own;
    other layers' variables get the std of their Keras initializer (the Kaiming std of
    their shape when that initializer is constant, e.g. zero biases).

    A model with Keras LoRA adapters (`layer.enable_lora(rank)`, `backbone.enable_lora`)
    evolves its adapters only: the LoRA factors are the evolvable variables, every other
    trainable variable is frozen (shared by all members, never changed).
    """
    owners = variable_owners(model)
    specs = []
    adapters = any(is_lora_variable(v) for v in model.trainable_variables)
    for index, variable in enumerate(model.trainable_variables):
        layer = owners.get(id(variable))
        name = variable.name
        shape = tuple(int(d) for d in variable.shape)
        dtype = str(variable.dtype)
        info = {}
        if layer is not None and hasattr(layer, "evolution_info"):
            info = layer.evolution_info().get(name, {})
        initializer = _resolve_initializer(layer, name) if layer is not None else None
        # Constant-initialised biases use the Kaiming std of their size, whatever their
        # layout (MultiHeadAttention keeps (heads, key_dim) biases).
        kaiming = kaiming_std((int(np.prod(shape)),) if "bias" in name else shape)
        if "init_std" in info:
            init_std = float(info["init_std"])
        elif initializer is not None and not _is_constant_initializer(initializer):
            init_std = initializer_std(initializer, shape)
        else:
            init_std = kaiming
        if not init_std > 0 or not math.isfinite(init_std):
            init_std = kaiming
        frozen = freeze_normalization and isinstance(layer, NORMALIZATION_LAYERS)
        lora = is_lora_variable(variable)
        if adapters and not lora:
            frozen = True
        specs.append(
            VariableSpec(
                index=index,
                path=variable.path,
                shape=shape,
                dtype=dtype,
                init_std=init_std,
                factor=bool(info.get("factor", False)),
                evolvable=not frozen,
                initializer=None if lora else initializer,
                lora=lora,
            )
        )
    return specs


def is_lora_variable(variable):
    """Whether `variable` is a factor of a Keras LoRA adapter (`lora_kernel_a`, ...)."""
    name = variable.path.rsplit("/", 1)[-1] if hasattr(variable, "path") else variable.name
    return name.startswith("lora_") and name[-2:] in ("_a", "_b")


def derive_seed(*entropy):
    """A deterministic 31-bit seed from a sequence of non-negative integers."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0]
    return int(state & 0x7FFFFFFF)


def initial_member(specs, seed, member):
    """The initial values of member `member` of a run seeded with `seed` (numpy arrays).

    Each evolvable variable is drawn by its own initializer, re-seeded from
    `(seed, member, variable index)`, so members are independent initialisations and any
    one can be re-created alone. LoRA factors (`spec.lora`) are the same for every
    member: the `_a` factor drawn from `(seed, 0, variable index)`, the `_b` factor zero,
    so every member starts as the pretrained model (the adapter's product is zero).
    """
    values = []
    for spec in specs:
        if not spec.evolvable:
            continue
        if spec.lora:
            if spec.path.endswith("_b"):
                values.append(np.zeros(spec.shape, dtype=spec.dtype))
                continue
            member = 0
        member_seed = derive_seed(seed, 0, member, spec.index)
        if spec.initializer is None:
            value = keras.random.normal(
                spec.shape, stddev=spec.init_std, dtype=spec.dtype, seed=member_seed
            )
        else:
            value = _reseed(spec.initializer, member_seed)(spec.shape, dtype=spec.dtype)
        values.append(np.asarray(keras.ops.convert_to_numpy(value), dtype=spec.dtype))
    return values


class _GivenSeed(keras.random.SeedGenerator):
    """A seed generator whose next seed is `[value, 0]` for a given integer tensor: the
    seed Keras draws from the Python integer `value`, so an initializer called with it
    inside a vectorised function draws what it draws with `seed=value` eagerly."""

    def __init__(self):
        super().__init__(seed=0)
        self.value = None

    def next(self, ordered=True):
        value = ops.cast(self.value, self.backend.random_seed_dtype())
        return ops.stack([value, ops.zeros_like(value)])


_DRAWS = weakref.WeakKeyDictionary()


def _member_draw(spec):
    """`draw(member_seeds) -> (len(member_seeds), *spec.shape)`: the initial values of
    `spec` for several members at once, each drawn as `initial_member` draws it."""
    if spec.initializer is not None and "seed" not in spec.initializer.get_config():
        return None  # an initializer without a seed: drawn member by member
    generator = _GivenSeed()
    if spec.initializer is None:
        def one(member_seed):
            generator.value = member_seed
            return keras.random.normal(spec.shape, stddev=spec.init_std, dtype=spec.dtype,
                                       seed=generator)
    else:
        config = dict(spec.initializer.get_config(), seed=generator)
        initializer = spec.initializer.__class__(**config)

        def one(member_seed):
            generator.value = member_seed
            return initializer(spec.shape, dtype=spec.dtype)

    from keras_lrne import backend as lrne_backend

    return lrne_backend.get().draw_per_seed(one, spec.shape, spec.dtype)


def initial_members(specs, seed, members):
    """`initial_member` of several members at once, stacked: one `(len(members), *shape)`
    numpy array per evolvable spec, equal to stacking `initial_member(specs, seed, m)`
    for each `m` in `members`, drawn in one call per variable."""
    members = [int(m) for m in np.asarray(members).reshape(-1)]
    values = []
    for spec in specs:
        if not spec.evolvable:
            continue
        if spec.lora or (spec.initializer is not None and _is_constant_initializer(
                spec.initializer)):
            # The same for every member (LoRA factors, constant initializers).
            one = initial_member([spec], seed, members[0] if not spec.lora else 0)[0]
            values.append(np.repeat(one[None], len(members), axis=0))
            continue
        draw = _DRAWS.get(spec)
        if draw is None:
            draw = _member_draw(spec)
            if draw is None:
                values.append(np.stack([initial_member([spec], seed, m)[0]
                                        for m in members]))
                continue
            _DRAWS[spec] = draw
        seeds = np.asarray([derive_seed(seed, 0, m, spec.index) for m in members], np.int32)
        values.append(np.asarray(keras.ops.convert_to_numpy(draw(seeds)), dtype=spec.dtype))
    return values


def initial_population(specs, seed, population_size):
    """Stacks `population_size` independent initial members into population tensors."""
    members = [initial_member(specs, seed, i) for i in range(population_size)]
    return [
        ops.convert_to_tensor(np.stack([m[j] for m in members]))
        for j in range(len(members[0]))
    ]


class LowRankMembers(NamedTuple):
    """One variable of a population given as a shared mean plus a low-rank perturbation
    per member, never materialised: member `i` is
    `mean + reshape(left[i] @ transpose(right[i]), mean.shape)`.

    For a variable of shape `(*lead, n)`, `left` is `(P, prod(lead), r)` and `right` is
    `(P, n, r)`. The population engine computes a layer's product with the mean once for
    all members and adds `(x @ left[i]) @ transpose(right[i])` per member (see
    `OpenES(perturbation_rank=...)`); `materialize` builds the dense members where a
    consumer needs them (Python fitness functions, environment rollouts, elites).

    Attributes:
        mean: the shared value, `(*shape)`.
        left: `(P, m, r)` tensor (any scale and sign already applied).
        right: `(P, n, r)` tensor.
    """

    mean: object
    left: object
    right: object

    @property
    def shape(self):
        """`(P, *mean.shape)`, as a dense population tensor's."""
        return (self.left.shape[0], *self.mean.shape)

    @property
    def dtype(self):
        return self.mean.dtype


class PopulationRecipe:
    """A population given by what makes its members, not by their weights.

    A member of the paper's GA is (parent, seed), one of OpenES is (noise seed, sign):
    a recipe holds the weights every member shares (the GA's survivors, OpenES's mean)
    and, per member, the few numbers that make it (`records`). `Strategy.ask` returns
    one; the engine's compiled evaluation expands it one chunk of members at a time
    inside the compiled call, evaluates the chunk and drops it, so nothing of size
    `P x (number of weights)` ever exists (see `docs/low_rank.md`).

    Member `i` is `expand(shared, *[r[i:i + 1] for r in records])`: `expand` builds the
    members whose records it is given, and a member's values depend only on its own
    records (not on which other members are expanded with it), so chunks, devices and
    Ray workers all build the same members bit for bit.

    For code that wants the members themselves, a recipe also behaves like the list a
    strategy used to return: `len(recipe)`, `recipe[j]` and iteration give each
    variable's entry for every member, a `(P, *shape)` tensor or a `LowRankMembers`
    (expanded once, on first use); `materialize()` gives dense tensors only.

    Args:
        expand: `expand(shared, *records) -> population`: a list with one entry per
            evolvable variable, a `(members, *shape)` tensor or a `LowRankMembers`.
            It is traced inside compiled functions (`keras.ops` and
            `keras_lrne.backend` only), unless `host` is True. Keep one function object
            per run: the engine compiles once per `expand`.
        shared: a list of tensors shared by every member.
        records: a tuple of arrays with one row per member (leading axis `P`).
        host: True when `expand` is a host (Python/numpy) function that cannot be
            traced (e.g. the GA's initial population, drawn by the layers' own
            initializers): it is then called per chunk outside the compiled call.

    Example:

    >>> recipe, state = strategy.ask(state)
    >>> recipe.size                       # members
    >>> first_two = recipe.rows([0, 1])    # their weights, one entry per variable
    """

    def __init__(self, expand, shared, records, host=False):
        if not callable(expand):
            raise ValueError(
                "Received an invalid value for `expand`, expected a function "
                f"`expand(shared, *records)`. Received: expand={expand!r}"
            )
        self.expand = expand
        self.shared = list(shared)
        self.records = tuple(records)
        if not self.records:
            raise ValueError("Received no `records`: a recipe needs at least one array "
                             "with one row per member. Received: records=()")
        self.host = bool(host)
        self._expanded = self._dense = None

    @property
    def size(self):
        """The number of members `P`."""
        return int(self.records[0].shape[0])

    def rows(self, members):
        """The members `members` (indices) as a population: one entry per variable,
        a `(len(members), *shape)` tensor or a `LowRankMembers`."""
        members = np.asarray(members, np.int32).reshape(-1)
        records = [_take_rows(r, members) for r in self.records]
        if self.host:
            return list(self.expand(self.shared, *records))
        return list(_compiled(self.expand)(self.shared, *records))

    def expanded(self):
        """Every member, one entry per variable (`rows` of all members; cached)."""
        if self._expanded is None:
            self._expanded = self.rows(np.arange(self.size))
        return self._expanded

    def materialize(self):
        """The dense `(P, *shape)` tensors of every member (cached)."""
        if self._dense is None:
            self._dense = materialize(self.expanded())
        return self._dense

    def __len__(self):
        return len(self.expanded())

    def __getitem__(self, index):
        return self.expanded()[index]

    def __iter__(self):
        return iter(self.expanded())

    def __repr__(self):
        return (f"PopulationRecipe(size={self.size}, shared={len(self.shared)} tensors, "
                f"records={len(self.records)}, host={self.host})")


def _take_rows(values, members):
    if isinstance(values, np.ndarray):
        return values[members]
    return ops.take(values, ops.convert_to_tensor(members), axis=0)


_COMPILED = weakref.WeakKeyDictionary()


def _compiled(expand):
    """`expand` compiled for use outside the engine's evaluation (cached)."""
    compiled = _COMPILED.get(expand)
    if compiled is None:
        from keras_lrne import backend as lrne_backend

        compiled = _COMPILED[expand] = lrne_backend.get().compile_random(
            lambda shared, *records: expand(shared, *records))
    return compiled


def population_size(population):
    """The number of members of a population: a `PopulationRecipe`, or a list of
    `(P, *shape)` tensors / `LowRankMembers`."""
    if isinstance(population, PopulationRecipe):
        return population.size
    first = population[0]
    return int(first.shape[0])


def materialize(population):
    """The dense population tensors `(P, *shape)` of a population whose entries may be
    `LowRankMembers` (dense entries pass unchanged), or of a `PopulationRecipe`."""
    if isinstance(population, PopulationRecipe):
        return population.materialize()
    dense = []
    for entry in population:
        if isinstance(entry, LowRankMembers):
            delta = ops.einsum("pmr,pnr->pmn", entry.left, entry.right)
            delta = ops.reshape(delta, (-1, *entry.mean.shape))
            entry = entry.mean[None] + ops.cast(delta, entry.mean.dtype)
        dense.append(entry)
    return dense

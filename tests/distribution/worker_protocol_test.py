"""Strategies rebuild members in a worker from seeds and indices (the protocol
`RayWorkers` uses), bit-identical to what `ask` returns."""

import numpy as np
import pytest
from keras import ops

from keras_lrne import backend as lrne_backend
from keras_lrne import genome
from keras_lrne.distribution.worker_protocol import protocol_for
from keras_lrne.strategies import GA, OpenES


def _numpy(values):
    return [lrne_backend.get().to_numpy(v) for v in genome.materialize(values)]


@pytest.mark.parametrize("strategy", [GA(7, 2, mutation_rate=0.1), OpenES(6),
                                      OpenES(4, mean_evaluation=False),
                                      OpenES(6, perturbation_rank=1)],
                         ids=["ga", "open_es", "open_es_no_mean", "open_es_low_rank"])
def test_a_worker_builds_the_members_ask_returns(strategy):
    specs = [(3, 2), 4]
    state = strategy.init(specs, seed=11)
    protocol = protocol_for(strategy)
    worker = protocol.worker_init(specs, 11)
    records = {}
    rng = np.random.default_rng(0)
    for generation in range(4):
        if generation:
            worker = protocol.worker_sync(worker, protocol.sync_payload(records, generation))
        population, state = strategy.ask(state)
        members = np.array([strategy.num_members - 1, 0, 2, 2], np.int32)
        built = protocol.worker_members(
            worker, protocol.member_payload(records, generation, members))
        for want, got in zip(_numpy(population), _numpy(built)):
            np.testing.assert_array_equal(got, want[members])
        losses = rng.normal(size=strategy.num_members)
        state, _ = strategy.tell(state, losses)
        for name, value in strategy.record(state).items():
            records.setdefault(name, []).append(np.asarray(value))
    assert ops.shape(genome.materialize(built)[0])[0] == len(members)


def test_strategies_without_the_protocol_say_so():
    from keras_lrne.strategies import Strategy

    with pytest.raises(NotImplementedError, match="Strategy cannot evaluate in remote workers"):
        protocol_for(Strategy(config=None))

"""The source ports of the L7 proxy's upstream connections (l7proxy/steering.py)."""
from __future__ import annotations

import itertools

import pytest

from webb_agent.l7proxy.steering import port_order


@pytest.mark.parametrize("ports", [(10260, 29999), (20000, 20063), (5, 5), (1, 7919),
                                   (1, 2 * 7919)])
def test_each_port_of_the_range_comes_once_per_turn(ports):
    lo, hi = ports
    n = hi - lo + 1
    turn = list(itertools.islice(port_order(ports), n))
    assert sorted(turn) == list(range(lo, hi + 1))

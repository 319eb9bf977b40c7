"""A peer that sends and then leaves: what it published before it
finalized (or died) is still delivered, however the wait and the liveness
check interleave; a wait on it that cannot complete still fails clearly.

Rank 0 is a real Engine; rank 1 is played by hand (tests/fuzz/regionkit.py).
The liveness check is wrapped so that rank 1 publishes its message and
leaves exactly between the engine's last poll and the check: the window a
real peer hits only now and then (an example's Gatherv once failed in it).
"""
import os
import sys

import pytest

from ivmpi import layout
from ivmpi.errors import PeerError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
import regionkit  # noqa: E402

EAGER = 1


@pytest.fixture
def kit():
    region = regionkit.GuardedRegion()
    region.reset()
    return region, region.engine(0), regionkit.RawPeer(region)


def leave_during_the_check(engine, region, peer, state, send):
    real_check = engine.liveness.check
    calls = []

    def check(rank, what):
        if not calls:
            if send:
                peer.put(EAGER, length=5, tag=7, payload=b"hello")
            layout.Slot(region.mem, 1).set(layout.S_STATE, state)
        calls.append(rank)
        return real_check(rank, what)
    engine.liveness.check = check
    return calls


@pytest.mark.parametrize("state", [layout.STATE_FINALIZED, layout.STATE_ABORTED])
def test_a_message_published_before_leaving_is_delivered(kit, state):
    region, engine, peer = kit
    buf = bytearray(5)
    op = engine.irecv(1, 7, 0, memoryview(buf))
    calls = leave_during_the_check(engine, region, peer, state, send=True)
    engine.wait(op, "Irecv from rank 1")
    assert calls, "the wait never reached the liveness check"
    assert op.done and bytes(buf) == b"hello" and op.status_tag == 7


@pytest.mark.parametrize("state, reason", [(layout.STATE_FINALIZED, "has finalized"),
                                           (layout.STATE_ABORTED, "aborted")])
def test_a_wait_that_cannot_complete_still_fails(kit, state, reason):
    region, engine, peer = kit
    op = engine.irecv(1, 7, 0, memoryview(bytearray(5)))
    leave_during_the_check(engine, region, peer, state, send=False)
    with pytest.raises(PeerError, match=f"^Irecv from rank 1: rank 1 {reason}"):
        engine.wait(op, "Irecv from rank 1")
    assert not op.done

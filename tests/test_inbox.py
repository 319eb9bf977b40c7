"""The head arrays (docs/layout.md, "Head arrays"): how ANY_SOURCE receives
and the progress engine find the rings that hold frames.

One process drives several real engines on one guarded mapping: ranks 1..n-1
send, rank 0 receives through its communicator fast path (FastPath) and its
engine.  Hostile cases write the head words by hand, as a peer could.
"""
import os
import re
import sys

import pytest

from ivmpi._fastcopy import FAST_NOT_HANDLED, FastPath
from ivmpi.errors import CorruptRegionError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
import regionkit  # noqa: E402

ANY = -1


class Job:
    """Engines for every rank of an n-rank layout; rank 0's fast path."""

    def __init__(self, nranks):
        self.region = regionkit.GuardedRegion(nranks=nranks)
        self.region.reset()
        self.geo = self.region.geo
        self.mem = self.region.mem
        self.engines = [self.region.engine(r) for r in range(nranks)]
        self.receiver = engine = self.engines[0]
        self.fast = FastPath(engine.tx, engine.rx, engine.posted, engine.unexpected,
                             engine.backlog, 0, engine.eager_limit)
        self.fast.engine = engine
        self.fast.lock = engine.lock
        self.fast.world_ranks = list(range(nranks))
        self.fast.comm_rank_of = {r: r for r in range(nranks)}

    def send(self, src, tag, data):
        op = self.engines[src].isend(0, memoryview(bytes(data)), tag, 0)
        assert op.done        # eager, and the ring had room
        return op

    def recv(self, source=ANY, tag=ANY, size=64):
        """(source, tag, payload) of one fast receive, or None when not handled."""
        buf = bytearray(size)
        n = self.fast.recv(buf, source, tag, 1)
        if n == FAST_NOT_HANDLED:
            return None
        return self.fast.last_source, self.fast.last_tag, bytes(buf[:n])


def test_any_source_serves_the_senders_in_turn():
    """With messages waiting from every sender, ANY_SOURCE takes one from
    each in turn (no sender starves), each sender's in its order."""
    job = Job(5)
    for seq in range(3):
        for src in (4, 2, 3, 1):
            job.send(src, 5, bytes([src, seq]))
    got = [job.recv() for _ in range(12)]
    assert [g[0] for g in got] == [1, 2, 3, 4] * 3
    assert [g[2] for g in got] == [bytes([s, q]) for q in range(3) for s in (1, 2, 3, 4)]
    assert job.recv() is None
    assert job.receiver.inbox.waiting() == []


def test_rotation_resumes_after_the_last_sender_served():
    job = Job(4)
    job.send(2, 1, b"a")
    assert job.recv()[0] == 2
    job.send(1, 1, b"b")
    job.send(3, 1, b"c")
    # The scan starts after rank 2: rank 3 before rank 1.
    assert [job.recv()[0] for _ in range(2)] == [3, 1]


def test_a_ring_whose_next_frame_is_not_wanted_is_passed_over():
    job = Job(4)
    job.send(1, 7, b"seven")
    job.send(2, 5, b"five")
    assert job.recv(tag=5) == (2, 5, b"five")
    assert job.receiver.inbox.waiting() == [1]
    assert job.recv(tag=5) is None
    assert job.recv(tag=7) == (1, 7, b"seven")
    assert job.receiver.inbox.waiting() == []


def test_frames_taken_by_other_paths_leave_the_inbox_in_step():
    """Known-source receives and the engine consume frames too: the inbox
    must not go on reporting rings they emptied, nor miss later frames."""
    job = Job(4)
    job.send(1, 1, b"x")
    job.send(3, 1, b"y")
    assert job.recv(source=3) == (3, 1, b"y")
    assert job.receiver.inbox.waiting() == [1]
    op = job.receiver.irecv(ANY, ANY, 0, None)
    job.receiver.progress()
    assert op.done and op.status_source == 1 and bytes(op.data) == b"x"
    assert job.receiver.inbox.waiting() == []
    job.send(2, 4, b"z")
    assert job.receiver.inbox.waiting() == [2]
    assert job.recv() == (2, 4, b"z")


def test_wrapping_rings_deliver_everything_exactly_once():
    """Rings of 4 KiB wrap (PAD frames) many times over: every message from
    every sender arrives once, in its sender's order."""
    job = Job(4)
    sent = {1: 0, 2: 0, 3: 0}
    received = {1: 0, 2: 0, 3: 0}
    for step in range(300):
        for src in (1, 2, 3):
            if (step + src) % 2:
                payload = bytes([src, sent[src] % 256]) * (100 + 37 * src)
                job.send(src, 9, payload)
                sent[src] += 1
        while True:
            got = job.recv(size=1024)
            if got is None:
                break
            src, tag, payload = got
            assert tag == 9 and payload == bytes([src, received[src] % 256]) * (100 + 37 * src)
            received[src] += 1
    assert received == sent
    assert job.receiver.inbox.waiting() == []


@pytest.mark.parametrize("nranks, senders", [(13, (12, 7, 8)), (64, (63, 9, 1, 56))])
def test_any_source_finds_senders_across_cache_lines(nranks, senders):
    """The scan tests the head array eight words at a time: senders in any
    line, and in a last line that is not full, are found."""
    job = Job(nranks)
    for src in senders:
        job.send(src, 2, bytes([src]))
    assert sorted(job.receiver.inbox.waiting()) == sorted(senders)
    got = [job.recv() for _ in senders]
    assert [g[0] for g in got] == sorted(senders)
    assert all(g[2] == bytes([g[0]]) for g in got)
    assert job.receiver.inbox.waiting() == []


def test_every_head_lives_in_its_receivers_head_array():
    """The senders publish where docs/layout.md says: word s of receiver d's
    array, and nothing in the ring's own control block."""
    job = Job(3)
    job.send(2, 1, b"abc")
    assert job.mem.load(job.geo.head(2, 0)) == 40
    assert job.mem.load(job.geo.inbox(0) + 16) == 40
    assert job.mem.load(job.geo.ring(2, 0)) == 0
    assert all(job.mem.load(job.geo.head(s, d)) == 0
               for s in range(3) for d in range(3) if (s, d) != (2, 0))


# --- hostile head words ----------------------------------------------------------

def test_a_word_in_the_receivers_own_place_is_ignored():
    """The diagonal word of a head array belongs to no ring: whatever a
    peer writes there, nothing is lost, duplicated or read from it."""
    job = Job(9)
    job.mem.store_release(job.geo.head(0, 0), 0xDEADBEEF)
    for src in (8, 1):
        job.send(src, 3, bytes([src]))
    assert job.receiver.inbox.waiting() == [1, 8]
    assert [job.recv() for _ in range(2)] == [(1, 3, b"\x01"), (8, 3, b"\x08")]
    assert job.recv() is None
    op = job.receiver.irecv(ANY, ANY, 0, None)
    assert not job.receiver.progress() and not op.done


@pytest.mark.parametrize("value, message", [
    (4096 + 8, "peer 2: ring head 4104 is more than a ring ahead (ring tail 0, head 0, "
               "ring 4096 bytes)"),
    (12, "peer 2: ring head 12 is not a multiple of 8 (ring tail 0, head 0, ring 4096 bytes)"),
    (64, "peer 2: frame at 0 has unknown kind 0 (ring tail 0, head 64, ring 4096 bytes)"),
])
def test_a_hostile_head_word_is_a_clear_error(value, message):
    """A head word that lies about what was published is checked like any
    ring head before a byte of the ring is read: an error naming the peer,
    from ANY_SOURCE receives and from the engine alike, and an honest
    sender's message stays where it was."""
    job = Job(3)
    job.send(1, 1, b"honest")
    job.mem.store_release(job.geo.head(2, 0), value)
    # Rank 1's message comes first in the scan: it is delivered.
    assert job.recv() == (1, 1, b"honest")
    for drive in (lambda: job.recv(), job.receiver.progress):
        with pytest.raises(CorruptRegionError, match="^" + re.escape(message) + "$"):
            drive()


def test_a_head_word_taken_back_hides_only_that_senders_message():
    """A sender that publishes and then rewrites its head word back before
    the receiver looked has, as far as anyone can tell, not sent: the
    others' messages flow, and once the head is published again its
    message arrives once."""
    job = Job(4)
    job.send(2, 6, b"late")
    word = job.geo.head(2, 0)
    published = job.mem.load(word)
    job.mem.store_release(word, 0)
    job.send(3, 6, b"other")
    assert job.recv() == (3, 6, b"other")
    assert job.recv() is None
    job.mem.store_release(word, published)
    assert job.recv() == (2, 6, b"late")
    assert job.recv() is None and job.receiver.inbox.waiting() == []


def test_a_head_word_run_backwards_after_it_was_seen_is_an_error():
    """What the receiver saw published stays delivered; then the error."""
    job = Job(3)
    job.send(1, 1, b"one")
    job.send(1, 1, b"two")
    assert job.recv() == (1, 1, b"one")
    job.mem.store_release(job.geo.head(1, 0), 8)
    assert job.recv() == (1, 1, b"two")
    with pytest.raises(CorruptRegionError, match=r"^peer 1: ring head went backwards to 8 "):
        job.recv()

"""Heap buffers for the large sends of schedules (nonblocking, persistent
and neighbourhood collectives).

A message over the eager limit sent from the caller's memory is a
rendezvous: the receiver must answer before the data streams through the
ring, chunk by chunk, both ranks taking part.  Sent from this rank's heap
in the region it is one announcement instead, and the receiver copies it
straight out whenever it runs (engine: RTS_REGION).  With more ranks than
cores that saves a round of scheduling per message, and the many sends of
an all-to-all or a scatter no longer wait for each other.

A schedule that stages copies its large send blocks into one heap buffer
(STAGE steps before its sends: plain stores, read by the peers from this
core's cache, streaming ones in the machine's slow phases; see
`stage_copy` in ivmpi/_ring.pxi) and sends from there.  Where a
schedule has many such blocks (a scatter's root, an all-to-all), each is
staged just before it goes (`interleaved`), so that its receiver copies it
out while the next one is staged instead of waiting for all of them.  The buffer lives as
long as the schedule's steps hold it: it is a numpy array over the heap
bytes, every step holds a view of it, and when the last view is gone a
finalizer hands the bytes back.  The finalizer may run anywhere (even
inside the engine), so it only files the buffer; the next allocation
releases it, under the engine's lock.  A run of a schedule completes only
once every receiver has acknowledged its copy, so bytes handed back are
no longer read.
"""
import weakref

import numpy

from ._fastcopy import SCHED_SEND, SCHED_STAGE, single_copy_to
from .errors import IvmpiError

# Schedules stage their sends over the eager limit on communicators of at
# least this many ranks.  On two ranks, one per core, the ring's chunked
# stream already overlaps the sender's copy with the receiver's.
STAGE_MIN_RANKS = 3


class StagingPool:
    """Heap buffers of one engine for schedules (see the module docstring)."""

    def __init__(self, engine):
        self.engine = engine
        self.retired = []

    def alloc(self, nbytes):
        """A uint8 array of nbytes in this rank's heap, or None (no heap,
        strict-align mode, no room): the caller sends from its own memory."""
        engine = self.engine
        heap = getattr(engine, "heap", None)
        if heap is None or heap.mem.strict or nbytes <= 0:
            return None
        with engine.lock:
            self._drain(heap)
            try:
                mem = heap.alloc(nbytes)
            except IvmpiError:
                return None
        array = numpy.frombuffer(mem, dtype=numpy.uint8)
        weakref.finalize(array, self.retired.append, mem)
        return array

    def release_retired(self):
        """Hand back the buffers of schedules that are gone now."""
        heap = getattr(self.engine, "heap", None)
        if heap is not None:
            with self.engine.lock:
                self._drain(heap)

    def _drain(self, heap):
        retired = self.retired
        while retired:
            heap.release(retired.pop())


def pool_of(engine):
    """The engine's StagingPool (made at first use)."""
    pool = getattr(engine, "_staging_pool", None)
    if pool is None:
        pool = StagingPool(engine)
        engine._staging_pool = pool
    return pool


def staged(ch, blocks, dests, steps):
    """The send blocks of a schedule on channel ch, those over the eager
    limit that go to another rank moved into one heap buffer: returns the
    list of blocks to send from, and appends to `steps` the STAGE steps
    that fill the heap buffer at each run.  blocks[k]
    goes to communicator rank dests[k] (None: not sent).  Without room in
    the heap, or on a small communicator, the blocks are sent as they are."""
    if ch.size < STAGE_MIN_RANKS:
        return blocks
    limit = ch.engine.eager_limit
    rank = ch.rank
    # A rank that copies large messages from our memory (ranks of one
    # kernel, ivmpi/_single_copy.pxi) takes its block from the caller's
    # buffer as it is: staging would add a copy.  Not a block that three
    # ranks or more read where ranks outnumber cores: staged once, each
    # copies it out of the heap while we run on, where a kernel copy each
    # would wait for us to answer its rendezvous (4 ranks on 2 cores,
    # 1 MiB, three alternating runs: Allgather_init 1310-1830 -> 1150-1330
    # us, Allgatherv_init 1320-1380 -> 820-1220, Iallgatherv 1310-1390 ->
    # 1140-1240; with two readers, a ring's neighbours, no gain; a
    # scatter's or an all-to-all's blocks, one reader each, are quicker
    # copied).
    sends = {}
    for k, block in enumerate(blocks):
        if dests[k] is not None and dests[k] != rank and block is not None:
            sends[id(block)] = sends.get(id(block), 0) + 1
    shared = ch.engine.oversubscribed
    large = [k for k, block in enumerate(blocks)
             if dests[k] is not None and dests[k] != rank and block is not None
             and len(block) > limit and (not single_copy_to(ch.world[dests[k]])
                                         or shared and sends[id(block)] >= 3)]
    if not large:
        return blocks
    # A block sent to many ranks (an allgather's) is staged once.
    first = {}
    for k in large:
        first.setdefault(id(blocks[k]), k)
    total = sum(_padded(len(blocks[k])) for k in first.values())
    array = pool_of(ch.engine).alloc(total)
    if array is None:
        return blocks
    out = list(blocks)
    at = 0
    place = {}
    for key, k in first.items():
        n = len(blocks[k])
        target = memoryview(array[at:at + n])
        steps.append((SCHED_STAGE, target, blocks[k]))
        place[key] = target
        at += _padded(n)
    for k in large:
        out[k] = place[id(blocks[k])]
    return out


def _padded(n):
    # Each staged block starts on a cache line of its own.
    return (n + 63) // 64 * 64


def interleaved(streams, sends):
    """The STAGE steps `streams` (from `staged`) merged into the SEND steps
    `sends` of one round: each just before the first send of its heap
    block (those no send reads first)."""
    pending = {id(step[1]): step for step in streams}
    out = []
    for step in sends:
        if step[0] == SCHED_SEND and pending:
            stream = pending.pop(id(step[2]), None)
            if stream is not None:
                out.append(stream)
        out.append(step)
    return list(pending.values()) + out

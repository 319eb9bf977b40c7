"""How much went through the region: the ring positions, per peer.

    >>> import ivmpi.stats
    >>> ivmpi.stats.traffic(comm)
    {1: {'written': 409856, 'read': 409600}}

Every ordered pair of processes has its own ring in the region, whose
control block holds two counters (docs/layout.md, "Rings"): ``head``, the
bytes the producer has published since start-up, and ``tail``, the bytes
the consumer has taken.  ``traffic`` reads them from the region itself, so
a nonzero count is proof that messages went through the shared memory and
not through the MPI library.

Ranks of one kernel copy large messages straight from their sender's
memory (ivmpi/_single_copy.pxi): their rendezvous frames cross the ring,
their data do not; ``single_copies`` counts those.

Ranks that share no region with this process (docs/routing.md) have no
ring: ``paths`` adds, for every peer, the path it takes and the messages
and bytes that went through the MPI library instead.
"""
from .layout import R_TAIL


def traffic(comm=None):
    """Bytes moved through the rings between this process and each peer.

    Returns ``{peer: {"written": W, "read": R}}`` for every other rank of
    ``comm`` (default: COMM_WORLD, if the job has started; ``{}`` if not):
    Peers that share no region with this process have no ring and are left
    out (see ``paths``).
    W is the position of the ring from this process to the peer (bytes this
    process published there), R that of the ring from the peer (bytes this
    process consumed).  The counts include the 32-byte frame headers and
    the padding a ring skips at its end, and cover all communicators (the
    rings belong to the pair of processes); messages a rank sends to itself
    never enter a ring.
    """
    comm = _started(comm)
    if comm is None:
        return {}
    engine = comm._engine
    mem, geo, me, slot_of = engine.mem, engine.geo, engine.slot, engine.slot_of
    counts = {}
    for peer, other in enumerate(comm._ranks):
        if other != engine.rank and other in slot_of:
            there = slot_of[other]
            counts[peer] = {"written": mem.load_acquire(geo.head(me, there)),
                            "read": mem.load_acquire(geo.ring(there, me) + R_TAIL)}
    return counts


def single_copies(comm=None):
    """Messages this process copied straight from a peer's memory.

    Returns ``{peer: {"messages": M, "bytes": B}}`` for every other rank of
    ``comm`` (default: COMM_WORLD) it copied any from, since start-up, all
    communicators together.
    """
    from . import _fastcopy
    comm = _started(comm)
    if comm is None:
        return {}
    counts = _fastcopy.single_copy_counts()
    out = {}
    for peer, other in enumerate(comm._ranks):
        if other in counts:
            messages, nbytes = counts[other]
            out[peer] = {"messages": messages, "bytes": nbytes}
    return out


def _started(comm):
    """_ivmpi(comm), or None for the default (COMM_WORLD) of a job not
    started: counts of nothing, without starting it."""
    if comm is None:
        from . import world
        if world._engine is None:
            return None
    return _ivmpi(comm)


def _ivmpi(comm):
    if comm is None:
        from . import world
        return world.get_world()
    from .comm import Comm
    if not isinstance(comm, Comm) or "_engine" not in comm.__dict__:
        raise TypeError(f"{type(comm).__module__}.{type(comm).__qualname__} is not an "
                        f"ivmpi communicator: its messages do not use the region")
    return comm


def paths(comm=None):
    """Per peer of comm (default COMM_WORLD): the path this process uses to
    reach it and what went each way.

    Returns ``{peer: {"path": P, "region": {"written": W, "read": R},
    "mpi": {"sent": [messages, bytes], "received": [messages, bytes],
    "direct": {"sent": [...], "received": [...]}}}}``
    for every other rank: P is "region" or "mpi" (ivmpi.path_to); "region"
    holds the ring positions (as ``traffic``, all communicators; None for a
    peer with no ring), "mpi" the point-to-point messages and payload
    bytes this process sent to and took from the peer through the MPI
    library since start-up (all communicators; the library's own collective
    calls are not counted: flat collectives on communicators spanning
    regions and the leaders' step of two-level ones, ivmpi.hierarchy,
    whose steps inside a group move the rings); of those,
    "mpi"/"direct" counts the ones that went straight between the caller's
    buffer and the library, never through the engine's queues
    (docs/routing.md).
    """
    from .routing import path_to
    comm = _ivmpi(comm)
    engine = comm._engine
    rings = traffic(comm)
    out = {}
    for peer, other in enumerate(comm._ranks):
        if other == engine.rank:
            continue
        out[peer] = {
            "path": path_to(comm, peer),
            "region": rings.get(peer),
            "mpi": {"sent": list(engine.library_sent.get(other, (0, 0))),
                    "received": list(engine.library_received.get(other, (0, 0))),
                    "direct": {
                        "sent": list(engine.library_sent_direct.get(other, (0, 0))),
                        "received": list(engine.library_received_direct.get(other, (0, 0)))}}}
    return out


def total(comm=None):
    """The sums over all peers: ``{"written": W, "read": R}``."""
    counts = traffic(comm).values()
    return {key: sum(c[key] for c in counts) for key in ("written", "read")}

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
"""
from .layout import R_TAIL


def traffic(comm=None):
    """Bytes moved through the rings between this process and each peer.

    Returns ``{peer: {"written": W, "read": R}}`` for every other rank of
    ``comm`` (default: COMM_WORLD, if the job has started; ``{}`` if not):
    W is the position of the ring from this process to the peer (bytes this
    process published there), R that of the ring from the peer (bytes this
    process consumed).  The counts include the 32-byte frame headers and
    the padding a ring skips at its end, and cover all communicators (the
    rings belong to the pair of processes); messages a rank sends to itself
    never enter a ring.
    """
    if comm is None:
        from . import world
        if world._engine is None:
            return {}
        comm = world.get_world()
    from .comm import Comm
    if not isinstance(comm, Comm):
        raise TypeError(f"{type(comm).__module__}.{type(comm).__qualname__} is not an "
                        f"ivmpi communicator: its messages do not use the region")
    engine = comm._engine
    mem, geo, me = engine.mem, engine.geo, engine.rank
    counts = {}
    for peer, other in enumerate(comm._ranks):
        if other != me:
            counts[peer] = {"written": mem.load_acquire(geo.head(me, other)),
                            "read": mem.load_acquire(geo.ring(other, me) + R_TAIL)}
    return counts


def total(comm=None):
    """The sums over all peers: ``{"written": W, "read": R}``."""
    counts = traffic(comm).values()
    return {key: sum(c[key] for c in counts) for key in ("written", "read")}

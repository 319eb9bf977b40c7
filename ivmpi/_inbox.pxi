# A rank's inbox: the head words of every ring into it (its head array in
# the region, docs/layout.md "Head arrays") beside a private copy of each
# ring's tail.  A ring holds frames not yet consumed exactly when its head
# differs from its tail, so finding the rings with something to read is a
# walk over nranks contiguous words, 8 to a cache line, of which only the
# lines a sender wrote since the last walk leave the cache: ANY_SOURCE and
# the progress engine no longer visit every ring (a cache line on a page of
# its own each) to learn that most of them are idle.
#
# A head read here only says where to look.  The ring's own poll() loads
# the head again with acquire and validates it before anything is read, so
# a hostile value costs at most a look at that ring (or the clear error the
# ring reports), never a frame read past what was published.  Nothing is
# missed either: every head the sender publishes is in this array, and a
# ring is skipped only while its head equals what this rank consumed.

from cpython.mem cimport PyMem_Calloc, PyMem_Malloc, PyMem_Free
from cpython.object cimport PyObject


cdef extern from "_inbox.h":
    int _pending "ivmpi_inbox_pending"(const char *heads, const uint64_t *tails,
                                       const void *rings, int start, int stop) nogil
    # The first sender s in [start, stop) whose head differs from our tail
    # and whose ring is attached (rings[s] != NULL), or -1 (see _inbox.h).


@cython.final
cdef class Inbox:
    """The head array of rank `rank` in a region laid out for `nranks`."""
    cdef Mapping mem
    cdef const char *heads       # region: heads[s], the head of ring (s, rank)
    cdef uint64_t *tails         # private: tails[s], what this rank consumed of it
    cdef PyObject **rings        # the RxRing of each sender (NULL: not attached),
    cdef list rx                 # ... kept alive by this list
    cdef readonly int nranks
    cdef readonly int rank

    def __cinit__(self, Mapping mem, Py_ssize_t offset, int nranks, int rank):
        if mem.base == NULL:
            raise ValueError("the region mapping is closed")
        if nranks < 1 or rank < 0 or rank >= nranks:
            raise ValueError(f"rank {rank} of {nranks} is not a rank")
        if offset < 0 or offset % 64 != 0 or offset > mem.size - 8 * <Py_ssize_t>nranks:
            raise ValueError(f"a head array of {nranks} words at offset {offset} does not fit "
                             f"the region")
        self.tails = <uint64_t *>PyMem_Calloc(nranks, sizeof(uint64_t))
        self.rings = <PyObject **>PyMem_Calloc(nranks, sizeof(PyObject *))
        if self.tails == NULL or self.rings == NULL:
            raise MemoryError()
        self.mem = mem
        self.heads = mem.base + offset
        self.nranks = nranks
        self.rank = rank
        self.rx = [None] * nranks

    def __dealloc__(self):
        PyMem_Free(self.tails)
        PyMem_Free(self.rings)

    def attach(self, RxRing rx, int slot=-1):
        """rx, the ring into this rank from the sender in `slot` of the
        region (default rx.peer: slot = world rank when one region holds
        every rank), keeps its tail copy here (its head word must be this
        array's word for that slot)."""
        cdef int peer = rx.peer if slot < 0 else slot
        if peer < 0 or peer >= self.nranks or peer == self.rank:
            raise ValueError(f"rank {self.rank} has no ring from {peer}")
        if <const char *>rx.head_p != self.heads + 8 * peer:
            raise ValueError(f"the ring from {peer} keeps its head outside this head array")
        self.tails[peer] = rx.tail
        rx.tail_copy = &self.tails[peer]
        rx.inbox = self
        self.rx[peer] = rx
        self.rings[peer] = <PyObject *>rx

    cdef inline int pending(self, int start, int stop) noexcept:
        """The first sender in [start, stop) whose ring holds bytes this rank
        has not consumed, or -1."""
        return _pending(self.heads, self.tails, self.rings, start, stop)

    cpdef int first_ready(self, int start) except -2:
        """The first sender from start on whose ring has a validated frame
        ready (poll() True), or -1.  The progress engine's scan."""
        cdef int s = self.pending(start, self.nranks)
        while s >= 0:
            if (<RxRing>self.rings[s]).poll():
                return s
            s = self.pending(s + 1, self.nranks)
        return -1

    def waiting(self):
        """Senders whose rings hold bytes not yet consumed (for tests and tools)."""
        return [s for s in range(self.nranks) if self.pending(s, s + 1) == s]


@cython.final
cdef class InboxView:
    """A communicator's part of the inbox: its members' rings by slot in
    the region (their world ranks when one region holds every rank),
    for the ANY_SOURCE scans of its fast paths (the inbox's arrays, with
    the rings of other communicators' members left out)."""
    cdef Inbox box               # keeps the arrays below alive
    cdef const char *heads
    cdef const uint64_t *tails
    cdef PyObject **rings        # rings[w]: the member's RxRing, NULL if not a member
    cdef int *comm_rank          # world rank -> communicator rank
    cdef int nranks
    cdef int next_world          # where the next taking scan starts (fairness)
    cdef int found_world         # world rank of what the last scan found

    def __cinit__(self, Inbox box, list slots, list rx):
        # slots[c]: the slot of communicator rank c, -1 if it has no ring.
        cdef int c, w
        self.rings = <PyObject **>PyMem_Calloc(box.nranks, sizeof(PyObject *))
        self.comm_rank = <int *>PyMem_Calloc(box.nranks, sizeof(int))
        if self.rings == NULL or self.comm_rank == NULL:
            raise MemoryError()
        for c in range(len(slots)):
            w = slots[c]
            if 0 <= w < box.nranks and box.rings[w] != NULL and rx[c] is box.rx[w]:
                self.rings[w] = box.rings[w]
                self.comm_rank[w] = c
        self.box = box
        self.heads = box.heads
        self.tails = box.tails
        self.nranks = box.nranks

    def __dealloc__(self):
        PyMem_Free(self.rings)
        PyMem_Free(self.comm_rank)

    cdef inline int ready(self, int start, int stop) except -2:
        """The first member's world rank in [start, stop) whose ring has a
        validated frame ready, or -1."""
        cdef int w = _pending(self.heads, self.tails, self.rings, start, stop)
        while w >= 0:
            if (<RxRing>self.rings[w]).poll():
                return w
            w = _pending(self.heads, self.tails, self.rings, w + 1, stop)
        return -1

# Schedules: the nonblocking, persistent and neighbourhood collectives as
# fixed programs run by one C loop (included by _fastcopy.pyx after
# _small_collectives.pxi, whose combine it uses).
#
# ivmpi.nbcoll and ivmpi.topocomm describe a collective as a list of steps
# once (at the call, or at _init for a persistent one): sends and receives
# of byte ranges to and from communicator ranks, grouped into rounds that
# end with a FENCE (every transfer of the round complete), and local steps
# between rounds (copies, combines of reductions, Python calls for the
# rest).  Running it costs no Python object per message: a send is one
# fast-path frame when it fits the ring, and a receive is taken straight
# out of the ring when its frame is there.  What the fast path cannot do
# goes to the engine: a send that does not fit becomes an engine send, and
# a receive not there yet is posted to the engine as soon as anyone but
# the schedule's own wait looks at it (the engine's progress, a Test), so
# that other traffic may pass it and it completes by any Wait/Test call.
#
# Order: receives from one rank within a round are tried in order, and one
# that cannot complete yet blocks the later ones from that rank (a later
# one must not take the earlier one's message); a posted receive keeps its
# place among the engine's posted receives, which the fast path respects.

from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.string cimport memcmp

cdef enum:
    ST_SEND = 1
    ST_RECV = 2
    ST_FENCE = 3
    ST_COPY = 4
    ST_COMBINE = 5       # acc (a) = b (op) acc, in C (predefined ops on plain numbers)
    ST_CALL = 6          # a Python callable (another op's Reduce_local, ...)
    ST_STAGE = 7         # COPY into this rank's heap (ivmpi.staging; stage_copy's stores)

SCHED_SEND = ST_SEND
SCHED_RECV = ST_RECV
SCHED_FENCE = ST_FENCE
SCHED_COPY = ST_COPY
SCHED_COMBINE = ST_COMBINE
SCHED_CALL = ST_CALL
SCHED_STAGE = ST_STAGE

# The schedules whose sends take each block once from the caller's buffer
# (the neighbourhood collectives and the Alltoall family), whose large
# blocks go in one copy from our memory to a peer that copies (ranks of one
# kernel, _single_copy.pxi): a 64 KiB Neighbor_alltoall on 2 ranks 15.3 ->
# 9.7 us, Ialltoall 10.2 -> 7.2.  Not the others: their sends forward or
# combine what they have just received, and waiting for the peer's
# clear-to-send holds the next round back (a 64 KiB Iallreduce on 2 ranks
# 16 -> 34 us, Iscan 4 ranks 40 -> 104); nor with more ranks than cores,
# where a clear-to-send waits for its receiver to be scheduled (Ialltoall
# on 4 ranks, 2 cores, 62 -> 78).
# Other schedules mark the sends that take the caller's own bytes (a
# gather's block, a scatter's or broadcast's at the root, the first link of
# a prefix chain: (SEND, peer, bytes, k, True)), announced the same way:
# the ring's two copies cross between cores twice, which on some hosts
# (vCPUs far apart) costs several times one copy (a 64 KiB Gather on 2
# ranks 4.4 us or 28 by turns, one copy 8-9.6 either way).
cdef bint _copies_callers_blocks(str what):
    return what.startswith(("Neighbor_", "Ineighbor_", "Alltoall", "Ialltoall"))


cdef enum:
    _PENDING = 0
    _DONE = 1
    _POSTED = 2          # a receive posted to the engine, or an engine send

ctypedef struct _Step:
    int kind
    int peer             # communicator rank (SEND, RECV)
    int code             # COMBINE: op code; SEND: 1 for the caller's own bytes
    int typ              # COMBINE: element type code
    long tag             # SEND, RECV: added to the run's tag
    char *a              # SEND: data; RECV, COPY: destination; COMBINE: inout
    char *b              # COPY: source; COMBINE: the other operand (the left one)
    Py_ssize_t n         # bytes; COMBINE: elements
    Py_ssize_t obj       # index in `objects`: the byte view (SEND, RECV) or callable (CALL)


cdef int _address(object mem, bint writable, char **data, Py_ssize_t *length) except -1:
    """Address and length of a contiguous byte buffer; the caller keeps the
    object (and so its memory) alive as long as the address is used."""
    cdef Py_buffer view
    PyObject_GetBuffer(mem, &view, PyBUF_SIMPLE | (PyBUF_WRITABLE if writable else 0))
    data[0] = <char *>view.buf
    length[0] = view.len
    PyBuffer_Release(&view)
    return 0


cdef class Schedule:
    """One collective's steps on one rank, and the state of its current run.

    Looks to a Request like one of the engine's operations: ``done`` (reading
    it advances the run, posting what waits), ``error``, ``peer``, ``state``,
    ``scope``.  ``start()`` begins a run (again and again, for a persistent
    collective): it calls the `prologue` callables (packing derived
    datatypes), runs as far as it can without waiting, and leaves the rest
    to ``wait()``, ``done`` and the engine's progress (Engine.schedules).
    On completion the `epilogue` callables run (unpacking)."""
    cdef FastPath fast
    cdef object engine
    cdef list world
    cdef long context
    cdef readonly long tag          # of the current run
    cdef readonly object scope
    cdef _Step *steps
    cdef Py_ssize_t nsteps
    cdef unsigned char *st
    cdef unsigned char *blocked     # by communicator rank, during one look at a round
    cdef int size
    cdef list objects
    cdef list ops                   # the engine operation of each step, or None
    cdef list keep
    cdef tuple prologue, epilogue
    cdef Py_ssize_t pc, first       # next step; first step of the current round
    cdef bint fenced                # pc is at a FENCE whose round is not complete
    cdef public bint _finished
    cdef public object error
    cdef readonly str what
    cdef Py_ssize_t moved           # transfers completed: part of `state`
    cdef bint copy_sends            # large sends announced for the peer to copy
    cdef bint copy_own              # those of sends marked as the caller's bytes
    cdef readonly bint streams      # sends to one peer fill half its ring in one run

    def __cinit__(self):
        self.steps = NULL
        self.st = NULL
        self.blocked = NULL

    def __init__(self, FastPath fast, engine, list world, long context, scope, long tag,
                 list steps, str what, prologue=(), epilogue=(), keep=None):
        """steps: tuples (SEND, peer, bytes[, k[, own]]), (RECV, peer, writable
        bytes[, k]) (their tag: the run's tag plus k, default 0; own: true
        when the bytes are the caller's, not received here), (FENCE,),
        (COPY, destination, source), (STAGE, heap destination, source),
        (COMBINE, code, type, inout, other,
        elements), (CALL, callable); a last FENCE is added when the steps
        do not end with one."""
        cdef Py_ssize_t i, n, length, k
        cdef _Step *s
        cdef char *data
        self.fast = fast
        self.engine = engine
        self.world = world
        self.context = context
        self.tag = tag
        self.scope = scope
        self.size = len(world)
        self.what = what
        self.copy_sends = _copies_callers_blocks(what) and not engine.oversubscribed
        self.copy_own = not engine.oversubscribed
        self.prologue = tuple(prologue)
        self.epilogue = tuple(epilogue)
        self.keep = keep
        self.objects = []
        if not steps or steps[len(steps) - 1][0] != ST_FENCE:
            steps = steps + [(ST_FENCE,)]
        n = len(steps)
        self.steps = <_Step *>PyMem_Malloc(n * sizeof(_Step))
        self.st = <unsigned char *>PyMem_Malloc(n)
        self.blocked = <unsigned char *>PyMem_Malloc(self.size + 1)
        if self.steps == NULL or self.st == NULL or self.blocked == NULL:
            raise MemoryError()
        memset(self.steps, 0, n * sizeof(_Step))
        self.nsteps = n
        self.ops = [None] * n
        for i in range(n):
            t = steps[i]
            s = &self.steps[i]
            s.kind = t[0]
            if s.kind == ST_SEND or s.kind == ST_RECV:
                s.peer = t[1]
                if s.peer < 0 or s.peer >= self.size:
                    raise ValueError(f"step {i}: rank {s.peer} is not in 0..{self.size - 1}")
                s.tag = t[3] if len(t) > 3 else 0
                s.code = 1 if s.kind == ST_SEND and len(t) > 4 and t[4] else 0   # own bytes
                _address(t[2], s.kind == ST_RECV, &s.a, &s.n)
                s.obj = len(self.objects)
                self.objects.append(t[2])
            elif s.kind == ST_COPY or s.kind == ST_STAGE:
                _address(t[1], True, &s.a, &s.n)
                _address(t[2], False, &s.b, &length)
                if length > s.n:
                    raise _BufferSpecError(f"{what}: a block of {length} bytes does not fit "
                                           f"the {s.n} bytes of the receive buffer")
                s.n = length
                self.objects.append(t[1])
                self.objects.append(t[2])
            elif s.kind == ST_COMBINE:
                s.code = t[1]
                s.typ = t[2]
                _address(t[3], True, &s.a, &length)
                _address(t[4], False, &s.b, &k)
                s.n = t[5]
                if s.n < 0 or s.n * _item_bytes(s.typ) > min(length, k):
                    raise ValueError(f"step {i}: {s.n} elements do not fit the buffers")
                self.objects.append(t[3])
                self.objects.append(t[4])
            elif s.kind == ST_CALL:
                s.obj = len(self.objects)
                self.objects.append(t[1])
            elif s.kind != ST_FENCE:
                raise ValueError(f"step {i}: unknown kind {s.kind}")
        self.streams = self._fills_a_ring()
        self._finished = True

    cdef bint _fills_a_ring(self):
        """Do the sends of one run to some peer take half its ring or more?
        Such a run (a large message in segments) would overflow the ring
        by itself: its sends wait a little for room.  Smaller runs do not
        (a ring full then means the caller runs ahead of its receiver, and
        a sender spinning on the ring slows the receiver emptying it)."""
        cdef dict sent = {}
        cdef Py_ssize_t i
        cdef _Step *s
        for i in range(self.nsteps):
            s = &self.steps[i]
            if s.kind == ST_SEND:
                sent[s.peer] = sent.get(s.peer, 0) + s.n + _HDR
        for peer, total in sent.items():
            ring = self.fast.tx[peer] if self.fast.enabled else None
            if ring is not None and 2 * total >= (<TxRing>ring).ring_bytes:
                return True
        return False

    def __dealloc__(self):
        PyMem_Free(self.steps)
        PyMem_Free(self.st)
        PyMem_Free(self.blocked)

    # --- running -----------------------------------------------------------------

    def start(self, long tag=-1):
        """Begin a run (on a new tag, if one is given); returns the schedule
        (the request's operation)."""
        cdef Py_ssize_t i
        if not self._finished:
            raise RuntimeError(f"{self.what}: the previous run has not completed")
        if tag >= 0:
            self.tag = tag
        for f in self.prologue:
            f()
        memset(self.st, _PENDING, self.nsteps)
        for i in range(self.nsteps):
            if self.ops[i] is not None:
                self.ops[i] = None
        self.pc = 0
        self.first = 0
        self.fenced = False
        self.moved = 0
        self.error = None
        self._finished = False
        if not self._run(1, False):
            # The engine's list of schedules in progress drops finished ones
            # on its own rounds of progress only: drop them here too, so it
            # stays short when nothing else makes progress.
            self._register()
        return self

    cdef int _register(self) except -1:
        """Join the engine's list of schedules in progress (a reused schedule
        may still be there from its last run)."""
        cdef EngineLock lock = self.fast.lock
        engine = self.engine
        if not lock.enter():
            lock._wait()
        try:
            schedules = engine.schedules
            if self not in schedules:
                running = [s for s in schedules if not (<Schedule>s)._finished]
                running.append(self)
                engine.schedules = running
        finally:
            lock._release()
        return 0

    @property
    def done(self):
        return self._poll_done()

    cdef bint _poll_done(self) except -1:
        """Finished, after advancing the run as far as it goes now."""
        return self._finished or self._run(1, True)

    cdef bint _run(self, int spins, bint post) except -1:
        """Advance while the steps allow; True once finished.  spins: polls of
        the first receive that is not there yet; post: receives not there
        yet are posted to the engine."""
        cdef _Step *s
        if self._finished:
            return True
        if not self.fast.lock.enter():
            return False            # another thread is inside the engine: later
        try:
            while True:
                if self.fenced:
                    if not self._round(spins, post):
                        return False
                    self.fenced = False
                    self.pc += 1
                    self.first = self.pc
                    continue
                if self.pc >= self.nsteps:
                    self._complete()
                    return True
                s = &self.steps[self.pc]
                if s.kind == ST_SEND:
                    self._send(self.pc, s)
                elif s.kind == ST_FENCE:
                    self.fenced = True
                    continue
                elif s.kind == ST_COPY:
                    if s.n:
                        ivmpi_move_plain(s.a, s.b, s.n)
                elif s.kind == ST_STAGE:
                    # A staging buffer the peers copy out (never one in
                    # strict-align mode: ivmpi.staging stages nothing there).
                    if s.n:
                        stage_copy(s.a, s.b, s.n)
                elif s.kind == ST_COMBINE:
                    _combine(s.code, s.typ, s.a, s.b, s.n, False)
                elif s.kind == ST_CALL:
                    self.objects[s.obj]()
                # ST_RECV: tried at the FENCE, in order
                self.pc += 1
        except BaseException as exc:
            self._fail(exc)
            return True
        finally:
            self.fast.lock.leave()

    cdef int _send(self, Py_ssize_t i, _Step *s) except -1:
        # A large block to a peer that copies from our memory: announced,
        # done on its clear-to-send (the buffers live until the schedule ends).
        if self.copy_sends or (s.code and self.copy_own):
            # The caller's own bytes to a rank that only receives them: our
            # core has nothing else to do for this send, so it may share
            # the receiver's copy (_single_copy.pxi).
            op = self.fast.announce_step(s.a, s.n, s.peer, self.tag + s.tag,
                                         s.code and not self.copy_sends)
            if op is not None:
                self.ops[i] = op
                self.st[i] = _POSTED
                return 0
        # (A run that would fill a ring by itself waits a little for room.)
        if (self.fast.send_ptr_patient(s.a, s.n, s.peer, self.tag + s.tag) if self.streams
                else self.fast.send_ptr(s.a, s.n, s.peer, self.tag + s.tag)):
            self.st[i] = _DONE
            self.moved += 1
            return 0
        op = self.engine.isend(self.world[s.peer], self.objects[s.obj], self.tag + s.tag,
                               self.context)
        op.scope = self.scope
        if op.done:
            self.st[i] = _DONE
            self.moved += 1
        else:
            self.ops[i] = op
            self.st[i] = _POSTED
        return 0

    cdef bint _round(self, int spins, bint post) except -1:
        """Look at every transfer of the current round; True when all are
        complete.  A pass that completes a receive is followed by another:
        frames from one rank come in the order it sent them, which may not
        be the order of the receives."""
        cdef Py_ssize_t i, got
        cdef _Step *s
        cdef bint complete = False, moved = True
        if _sc_requested():
            with nogil:
                _sc_serve_offers()      # a receiver asks for part of a send of ours
        while moved and not complete:
            complete = True
            moved = False
            memset(self.blocked, 0, self.size)
            for i in range(self.first, self.pc):
                if self.st[i] == _DONE:
                    continue
                s = &self.steps[i]
                if s.kind == ST_SEND:
                    op = self.ops[i]
                    if not op.done and type(op) is SendOp:
                        self.fast.poll_send(op)     # its clear-to-send, in C
                    if op.done:
                        if type(op) is SendOp:
                            _sc_withdraw((<SendOp>op).peer, (<SendOp>op).send_id)
                        self.st[i] = _DONE
                        self.ops[i] = None
                        self.moved += 1
                    else:
                        complete = False
                    continue
                if s.kind != ST_RECV:
                    continue
                if self.st[i] == _POSTED:
                    op = self.ops[i]
                    if not op.done:
                        self.blocked[s.peer] = 1
                        complete = False
                        continue
                    if op.error is not None:
                        self._truncated(op)
                    self.st[i] = _DONE
                    self.ops[i] = None
                    self.moved += 1
                    continue
                if self.blocked[s.peer] and self._earlier(i, s):
                    complete = False
                    continue
                got = self.fast.recv_ptr(s.a, s.n, s.peer, self.tag + s.tag, spins)
                spins = 1           # only the first receive that waits spins
                if got >= 0:
                    self.st[i] = _DONE
                    self.moved += 1
                    moved = True
                    continue
                self.blocked[s.peer] = 1
                complete = False
                if post:
                    self._post(i, s)
        return complete

    cdef bint _earlier(self, Py_ssize_t i, _Step *s):
        """Is a receive before step i, from the same rank with the same tag,
        still incomplete?  Then step i must wait: it would take that one's
        message."""
        cdef Py_ssize_t j
        cdef _Step *e
        for j in range(self.first, i):
            e = &self.steps[j]
            if e.kind == ST_RECV and self.st[j] != _DONE and e.peer == s.peer \
                    and e.tag == s.tag:
                return True
        return False

    cdef int _post(self, Py_ssize_t i, _Step *s) except -1:
        op = self.fast._post_receive(s.peer, self.tag + s.tag, self.objects[s.obj])
        op.scope = self.scope
        self.ops[i] = op
        self.st[i] = _POSTED
        return 0

    cdef int _truncated(self, op) except -1:
        world = self.world
        source = world.index(op.status_source) if op.status_source in world else -1
        raise MPIError_(_TRUNCATE_CLASS, f"{self.what}: message of {op.total} bytes from rank "
                                         f"{source} does not fit the receive buffer")

    cdef int _complete(self) except -1:
        self._finished = True
        for f in self.epilogue:
            f()
        return 0

    cdef int _fail(self, exc) except -1:
        """End the run with exc (raised by the Wait/Test that completes it);
        receives still posted are withdrawn, so that they cannot take later
        messages."""
        cdef Py_ssize_t i
        self.error = exc
        self._finished = True
        for i in range(self.nsteps):
            op = self.ops[i]
            if op is not None:
                if self.steps[i].kind == ST_RECV and not op.done:
                    self.engine.cancel(op)
                self.ops[i] = None
        return 0

    def wait(self, what=None):
        """Run to completion: spin on the fast paths while the awaited
        messages come, then post and let the engine wait (it progresses
        everything else meanwhile, and reports timeouts and dead peers)."""
        engine = self.engine
        spins = self.fast.spins
        while not self._run(spins, False):
            if self._run(1, True):
                break
            op = self._pending()
            if type(op) is RecvOp:
                engine.wait(op, what if what is not None else self.what)
            else:
                engine.wait(self, what if what is not None else self.what)

    cdef object _pending(self):
        cdef Py_ssize_t i
        for i in range(self.first, self.pc):
            op = self.ops[i]
            if op is not None and not op.done:
                return op
        return None

    @property
    def peer(self):
        op = self._pending()
        return None if op is None else op.peer

    @property
    def state(self):
        # Read now and then by a wait: it changes whenever the run advances,
        # which restarts IVMPI_TIMEOUT.
        cdef Py_ssize_t i
        if self._finished:
            return f"{self.what}: complete"
        waiting = []
        for i in range(self.first, self.pc):
            if self.st[i] != _DONE:
                kind = "a receive from" if self.steps[i].kind == ST_RECV else "a send to"
                waiting.append(f"{kind} rank {self.steps[i].peer}")
        return (f"{self.what}: step {self.pc} of {self.nsteps}, {self.moved} transfers "
                f"complete, waiting for {', '.join(waiting) or 'nothing'}")


# Set by ivmpi.nbcoll (the request module's MPIError and MPI.ERR_TRUNCATE):
# this module cannot import them.
MPIError_ = None
_TRUNCATE_CLASS = 0


def set_schedule_errors(error_type, truncate_class):
    global MPIError_, _TRUNCATE_CLASS
    MPIError_ = error_type
    _TRUNCATE_CLASS = truncate_class


from cpython.ref cimport Py_REFCNT


cdef object _MISSING = object()


cdef class BoundCollective:
    """A collective bound as a communicator's own attribute (Comm._bind_fast,
    Topocomm._bind_fast), so that a call goes from the program to
    Channel.run (blocking) or Channel.request (nonblocking) with no Python
    frame between.  names and defaults are the method's parameters after
    self (the defaults those of the last ones), extra the arguments its plan
    method takes after them; a neighbourhood collective (topology) takes its
    tags from the communicator's topology.  The communicator is held weakly
    (no cycle through its attributes); its channel is found at the first
    call, and again once it is freed (channel_of then raises)."""
    cdef object comm_ref, channel_of
    cdef str what, plan
    cdef tuple names, defaults, extra
    cdef bint blocking, topology
    cdef Channel channel
    cdef long tags

    def __init__(self, comm_ref, channel_of, str what, str plan, tuple names, tuple defaults,
                 tuple extra, bint blocking, bint topology=False):
        self.comm_ref = comm_ref
        self.channel_of = channel_of
        self.what = what
        self.plan = plan
        self.names = names
        self.defaults = defaults
        self.extra = extra
        self.blocking = blocking
        self.topology = topology

    def __call__(self, *args, **kwargs):
        comm = self.comm_ref()
        if comm is None:
            raise RuntimeError(f"{self.what}: the communicator is gone")
        if self.channel is None or comm._freed:
            self.channel = self.channel_of(comm)
            self.tags = comm._topo.tags if self.topology else 1
        if kwargs or len(args) != len(self.names):
            args = self._bind(args, kwargs)
        if self.extra:
            args = args + self.extra
        channel = self.channel
        # The plan method is looked up only when the call is not a repeat.
        schedule, key = channel.restart(self.what, args, self.tags)
        if schedule is None:
            schedule = channel.describe(self.what, getattr(comm, self.plan), args, self.tags, key)
        if self.blocking:
            channel._finish(schedule, self.what)
            return None
        return channel._request(comm, self.what, schedule)

    cdef tuple _bind(self, tuple args, dict kwargs):
        """args and kwargs as the method's positional arguments, defaults
        filled in; the errors Python gives a function of that signature."""
        cdef Py_ssize_t n = len(self.names), first_default = n - len(self.defaults), i
        if len(args) > n:
            raise TypeError(f"{self.what}() takes at most {n} arguments ({len(args)} given)")
        out = list(args) + [_MISSING] * (n - len(args))
        for key, value in kwargs.items():
            if key not in self.names:
                raise TypeError(f"{self.what}() got an unexpected keyword argument '{key}'")
            i = self.names.index(key)
            if out[i] is not _MISSING:
                raise TypeError(f"{self.what}() got multiple values for argument '{key}'")
            out[i] = value
        for i in range(n):
            if out[i] is _MISSING:
                if i < first_default:
                    raise TypeError(f"{self.what}() missing required argument "
                                    f"'{self.names[i]}' (pos {i + 1})")
                out[i] = self.defaults[i - first_default]
        return tuple(out)


cdef class Channel:
    """What the collectives of one communicator share: the hidden twin's
    fast path, engine, world ranks, context and members, the count of
    collectives started (which gives each its tag), and the schedules of
    the last nonblocking call of each kind (see restart)."""
    cdef readonly FastPath fast
    cdef readonly object engine
    cdef readonly list world
    cdef readonly long ctx
    cdef readonly object scope
    cdef readonly long rank, size
    cdef readonly long tag_base, tag_mask
    cdef long started
    cdef dict cache
    cdef Py_ssize_t *key_words      # the key of the call being started (see _key)
    cdef Py_ssize_t key_len, key_cap
    cdef list key_pins
    cdef list key_foreign           # (object, its ForeignBuffer) met by _key
    cdef readonly long cache_max_bytes
    cdef object in_place, op_type, datatype_type, request_type

    def __init__(self, twin, long tag_base, long tag_mask, long cache_max_bytes, in_place,
                 op_type, datatype_type, request_type):
        self.fast = twin._fast
        self.engine = twin._engine
        self.world = twin._ranks
        self.ctx = twin._ctx
        self.scope = twin._scope      # any member's death ends a wait on them
        self.rank = twin.rank
        self.size = twin.size
        self.tag_base = tag_base
        self.tag_mask = tag_mask
        self.started = 0
        self.cache = {}
        self.key_cap = 64
        self.key_words = <Py_ssize_t *>PyMem_Malloc(self.key_cap * sizeof(Py_ssize_t))
        if self.key_words == NULL:
            raise MemoryError()
        self.key_len = 0
        self.key_pins = []
        self.key_foreign = []
        self.cache_max_bytes = cache_max_bytes
        self.in_place = in_place
        self.op_type = op_type
        self.datatype_type = datatype_type
        self.request_type = request_type

    def __dealloc__(self):
        PyMem_Free(self.key_words)

    cpdef long next_tag(self, long count=1) except -1:
        """The first of `count` tags of a new collective (all ranks start
        collectives in the same order, so they agree on it)."""
        cdef long seq
        cdef EngineLock lock = self.fast.lock
        if not lock.enter():
            lock._wait()
        seq = self.started
        self.started = seq + count
        lock._release()
        return self.tag_base + (seq & self.tag_mask)

    def schedule(self, long tag, list steps, str what, prologue=(), epilogue=()):
        return Schedule(self.fast, self.engine, self.world, self.ctx, self.scope, tag, steps,
                        what, prologue, epilogue)

    # A nonblocking call with the same small buffers as the previous call of
    # its kind runs that call's schedule again (on a new tag) instead of
    # describing it anew, as MPI libraries cache their nonblocking
    # schedules.  The key holds what the description depends on: each
    # buffer (a numpy array, bytearray or bytes of at most cache_max_bytes),
    # the values of the numbers, and the contents of list specs (counts,
    # displacements, the identity and handle of each datatype), which may
    # change between calls.  A bytearray or bytes is keyed by its identity:
    # the bytes it names cannot move while the cached schedule holds it.  A
    # numpy array is keyed by its memory (address, dtype, writability,
    # shape, strides), not by the object, so code that passes a new view of
    # the same array in each call (a slice, a[...]) finds the schedule too;
    # that memory is the cached call's, which the cache keeps alive, so the
    # same address is the same bytes.  Anything else (another buffer type,
    # a numpy integer, an int beyond 64 bits) is not cached.
    #
    # The key is a row of machine words written into one C buffer (a tag
    # per item, then its words) and compared with the cached call's row by
    # memcmp: a repeated call allocates nothing to be recognised.  Objects
    # keyed by identity (strings, datatypes, ops, bytes) are held by the
    # cache entry (`pins`), so that no other object can take their address.

    cdef int _push(self, Py_ssize_t word) except -1:
        cdef Py_ssize_t *grown
        if self.key_len == self.key_cap:
            grown = <Py_ssize_t *>PyMem_Realloc(self.key_words,
                                                 2 * self.key_cap * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self.key_words = grown
            self.key_cap *= 2
        self.key_words[self.key_len] = word
        self.key_len += 1
        return 0

    cdef int _pin(self, object a, Py_ssize_t tag) except -1:
        self._push(tag)
        self._push(<Py_ssize_t><void *>a)
        self.key_pins.append(a)
        return 0

    cdef bint _key_of(self, object a, bint described=False) except -1:
        """Push a's key; described: a is part of a spec's description (its
        counts, displacements, datatypes: everything after the buffer),
        whose values the schedule takes in."""
        cdef cnp.ndarray arr
        cdef int i, overflow
        cdef long long value
        t = type(a)
        if t is cnp.ndarray and described:
            # Counts or displacements: by value (an array changed in place
            # between two calls is the same memory, not the same numbers).
            arr = <cnp.ndarray>a
            if cnp.PyArray_NDIM(arr) != 1 or cnp.PyArray_SIZE(arr) > 4096 \
                    or not cnp.PyArray_ISINTEGER(arr):
                return False
            self._push(12)
            self._push(cnp.PyArray_SIZE(arr))
            for item in arr.tolist():
                value = PyLong_AsLongLongAndOverflow(item, &overflow)
                if overflow:
                    return False
                self._push(<Py_ssize_t>value)
        elif t is cnp.ndarray:
            arr = <cnp.ndarray>a
            if cnp.PyArray_NBYTES(arr) > self.cache_max_bytes:
                return False
            # The dtype by identity: the cached call's array keeps it alive
            # (an equal dtype of another identity only misses).
            self._push(1)
            self._push(<Py_ssize_t>cnp.PyArray_DATA(arr))
            self._push(<Py_ssize_t><void *>cnp.PyArray_DESCR(arr))
            self._push(cnp.PyArray_ISWRITEABLE(arr))
            self._push(cnp.PyArray_NDIM(arr))
            for i in range(cnp.PyArray_NDIM(arr)):
                self._push(cnp.PyArray_DIMS(arr)[i])
                self._push(cnp.PyArray_STRIDES(arr)[i])
        elif t is bytearray or t is bytes:
            if len(a) > self.cache_max_bytes:
                return False
            self._pin(a, 2)
        elif t is int or t is bool:
            value = PyLong_AsLongLongAndOverflow(a, &overflow)
            if overflow:
                return False
            self._push(3 if t is int else 4)
            self._push(<Py_ssize_t>value)
        elif t is str:
            self._pin(a, 5)
        elif t is list or t is tuple:
            # A spec: [buf, ...] (or a tuple of counts and displacements).
            self._push(6 if t is list else 7)
            self._push(len(a))
            for i, item in enumerate(a):
                if not self._key_of(item, described or i > 0):
                    return False
        elif a is None or a is self.in_place or isinstance(a, self.op_type):
            self._pin(a, 8)
        elif isinstance(a, self.datatype_type):
            self._pin(a, 9)
            value = PyLong_AsLongLongAndOverflow(a.handle, &overflow)
            if overflow:
                return False
            self._push(<Py_ssize_t>value)
        elif PyObject_CheckBuffer(a):
            return False
        else:
            # A DLPack or CUDA-array-interface object (a CPU tensor) is
            # exported anew by every call: keyed by its memory, as a numpy
            # array, and the call goes on with the export (see _key).
            fb = _foreign(a)
            if fb is None or (<ForeignBuffer>fb).nbytes > self.cache_max_bytes:
                return False
            self._push(10)
            self._push(<Py_ssize_t>(<ForeignBuffer>fb).data)
            self._push((<ForeignBuffer>fb).nbytes)
            self._push((<ForeignBuffer>fb).readonly)
            self._pin((<ForeignBuffer>fb).fmt, 11)
            self.key_foreign.append((a, fb))
        return True

    cdef bint _key(self, str what, tuple args) except -1:
        """The key of args into key_words[:key_len] (its pins in
        key_pins); False: not cached."""
        cdef Py_ssize_t i
        self.key_len = 0
        if self.key_pins:
            del self.key_pins[:]
        if self.key_foreign:
            del self.key_foreign[:]
        for i, a in enumerate(args):
            # (Ireduce_scatter's recvcounts are the one description passed
            # on its own, not in a spec.)
            if not self._key_of(a, i == 2 and what == "Ireduce_scatter"):
                return False
        return True

    cdef tuple _exported(self, tuple args):
        """args with each object _key met exported (bare, or in a list or
        tuple spec) replaced by its ForeignBuffer."""
        cdef dict found = {id(a): fb for a, fb in self.key_foreign}
        out = []
        for a in args:
            if id(a) in found:
                a = found[id(a)]
            elif type(a) is list or type(a) is tuple:
                a = type(a)([found.get(id(item), item) for item in a])
            out.append(a)
        return tuple(out)

    cpdef tuple restart(self, str what, tuple args, long tags=1):
        """(schedule started anew on `tags` new tags, None), or (None, key)
        when the call must describe its steps (key: what describe() files
        them under, the row of words and its pins, or None)."""
        cdef Schedule schedule
        cdef bytes cached
        if not self._key(what, args):
            return None, None
        entry = self.cache.get(what)
        if entry is not None:
            cached = (<tuple>entry)[0]
            if len(cached) == self.key_len * <Py_ssize_t>sizeof(Py_ssize_t) and memcmp(
                    PyBytes_AS_STRING(cached), self.key_words, len(cached)) == 0:
                schedule = (<tuple>entry)[1]
                # Nobody else may hold it: references are the entry's, this
                # name's, and the engine's list of schedules in progress
                # (which keeps a finished one until its next round of progress).
                refs = Py_REFCNT(schedule)
                if schedule._finished and (refs <= 2 or refs <= 2 + (
                        schedule in self.engine.schedules)):
                    return schedule.start(self.next_tag(tags)), None
        return None, (PyBytes_FromStringAndSize(<char *>self.key_words,
                                                self.key_len * sizeof(Py_ssize_t)),
                      list(self.key_pins))

    cdef Schedule describe(self, str what, object make_plan, tuple args, long tags, object key):
        """Start collective `what` on `tags` new tags as make_plan(*args)
        describes it ((steps, prologue, epilogue), or a function of the
        channel giving them), filed under key for the next call (restart)."""
        cdef Schedule schedule
        plan = make_plan(*args)
        if callable(plan):
            plan = plan(self)
        steps, prologue, epilogue = plan
        schedule = Schedule(self.fast, self.engine, self.world, self.ctx, self.scope,
                            self.next_tag(tags), steps, what, prologue, epilogue)
        if key is not None:
            words, pins = key
            self.cache[what] = (words, schedule, args, pins)
        schedule.start()
        return schedule

    cpdef Schedule begin(self, str what, object make_plan, tuple args, long tags=1):
        """Start collective `what` on `tags` new tags: the schedule of the
        previous call with the same arguments again, or a new one described
        by make_plan(*args) (describe)."""
        schedule, key = self.restart(what, args, tags)
        if schedule is not None:
            return schedule
        if key is not None and self.key_foreign:
            args = self._exported(args)
        return self.describe(what, make_plan, args, tags, key)

    cpdef run(self, str what, object make_plan, tuple args, long tags=1):
        """A blocking collective: begin(), then wait for it here, raising
        its error (no request in between)."""
        self._finish(self.begin(what, make_plan, args, tags), what)

    cdef int _finish(self, Schedule schedule, str what) except -1:
        if not schedule._finished:
            schedule.wait(what)
        if schedule.error is not None:
            raise schedule.error
        return 0

    cdef object _request(self, comm, str what, Schedule schedule):
        request = self.request_type.__new__(self.request_type)
        request._comm = comm
        request._op = schedule
        request._decode = None
        request._what = what
        return request

    def request(self, comm, str what, make_plan, tuple args, long tags=1):
        """begin(), as a request of request_type (a Request subclass) for comm."""
        return self._request(comm, what, self.begin(what, make_plan, args, tags))

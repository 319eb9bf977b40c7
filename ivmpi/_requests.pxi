# Request.Test and the calls that complete one or some of a list of
# requests (Testall, Waitany, Testany, Waitsome, Testsome), in C for the
# common case: no statuses asked for, ivmpi's own requests of the two
# plain types (_fastpath.pxi: set_request_types; the tests also those of
# nonblocking collectives), no error to report.
# They are called in polling loops, where a pass in Python over the list
# and a round of the engine's progress per call cost 2-3x mpi4py's whole
# call.  Everything else goes to the Python methods (ivmpi/request.py).

cdef object _py_Test = None
cdef object _py_Testall = None
cdef object _py_Waitany = None
cdef object _py_Testany = None
cdef object _py_Waitsome = None
cdef object _py_Testsome = None
cdef long _UNDEFINED = -32766       # MPI.UNDEFINED, set below
# Rounds of C polls over the pending requests' peers before a Waitany or
# Waitsome waiting for several hands over to the engine's wait.
cdef int _ANY_ROUNDS = 256


def set_request_completions(test, testall, waitany, testany, waitsome, testsome, undefined):
    """The Python methods the C versions below hand the rest to."""
    global _py_Test, _py_Testall, _py_Waitany, _py_Testany, _py_Waitsome, _py_Testsome
    global _UNDEFINED
    _py_Test, _py_Testall, _py_Waitany = test, testall, waitany
    _py_Testany, _py_Waitsome, _py_Testsome = testany, waitsome, testsome
    _UNDEFINED = undefined


def scan_requests(requests):
    """One pass over ivmpi requests (_scan) for the Python methods:
    (active, done, pending, waiting) with active the number whose
    operation is not None (the others are null or inactive), done the list
    of indices of those whose operation is done, pending the first request
    whose operation is not (or None) and waiting how many such.
    AttributeError for one that is not ivmpi's."""
    cdef Py_ssize_t active, waiting, pending
    cdef list done = []
    _scan(requests, &active, &waiting, &pending, done)
    return active, done, (requests[pending] if pending >= 0 else None), waiting


cdef class OneOf:
    """A Waitany or Waitsome waiting for the one request of its list not
    done, as errors name it."""
    cdef str call
    cdef Py_ssize_t n
    cdef object req

    def __cinit__(self, str call, Py_ssize_t n, object req):
        self.call, self.n, self.req = call, n, req

    def _description(self):
        return f"{self.call} of {self.n} requests (waiting for {self.req._description()})"


cdef bint _plain_requests(object requests) except -1:
    """A list or tuple of requests of the two plain types only."""
    if type(requests) is not list and type(requests) is not tuple:
        return False
    for req in requests:
        if type(req) is not _Request and type(req) is not _Prequest:
            return False
    return True


# The requests of nonblocking and persistent collectives (ivmpi.nbcoll):
# their own Wait, but Request's tests, which the C tests below take too.
cdef object _CollectiveRequest = None
cdef object _CollectivePrequest = None


def set_collective_request_types(request, prequest):
    global _CollectiveRequest, _CollectivePrequest
    _CollectiveRequest, _CollectivePrequest = request, prequest


cdef inline bint _testable(object req) noexcept:
    """A request whose tests the C versions below take."""
    t = type(req)
    return (t is _Request or t is _Prequest or t is _CollectiveRequest
            or t is _CollectivePrequest)


cdef bint _testable_requests(object requests) except -1:
    """A list or tuple of requests that are all _testable."""
    if type(requests) is not list and type(requests) is not tuple:
        return False
    for req in requests:
        if not _testable(req):
            return False
    return True


cdef int _idle_progress(EngineCore core, unsigned long long taken) except -1:
    """A test's round of progress, in C, when it needs nothing of the
    engine's Python: nothing queued to send, no library operation, shared
    copy or service, and in the inbox only acknowledgements, eager frames
    (delivered into a posted receive that takes them or set aside as
    unexpected messages, as the engine's round does, or left in the ring
    for the collective in progress on their context).  The collectives
    advance (reading `done`), and with more ranks than cores, when nothing
    moved (no frame taken since `taken` was read from _frames_taken, by
    this round or the test's poll before it), the core is given away, as
    Engine.test_progress does.  The engine's
    round in Python would take the collectives' frames aside as unexpected
    messages and match them to their receives later, some 1.5 us a test
    more.  1: done, nothing moved; 2: done, something moved; 0: something
    else is there, and the engine's own round must run."""
    if (core.backlog or core.sharing or core.routes or core.library_ops or core.services
            or core.engine.library_pending):
        return 0
    cdef Inbox inbox = <Inbox?>core.inbox
    cdef EngineLock lock = core.lock
    cdef bint moved = False
    cdef Py_ssize_t delivered
    engine = core.engine
    if not lock.enter():
        return 0
    try:
        while True:
            # One finished: enough for this round.  The frames still in the
            # inbox may be the next run's, from peers ahead, which that run
            # takes straight from the ring.
            schedules = engine.schedules
            if schedules and _advance_schedules(engine):
                return 2
            delivered = _collective_frames(inbox, core.rx_by_slot, schedules,
                                           core.posted, core.unexpected,
                                           core.eager_limit, core.tx, core.awaiting_ack,
                                           core.service_contexts, core.awaiting_cts)
            if delivered < 0:
                return 0
            if delivered == 0:
                break
            moved = True
    finally:
        lock.leave()
    if not moved and core.oversubscribed and _frames_taken == taken:
        with nogil:
            _yield_idle()
    return 2 if moved else 1


cdef Py_ssize_t _collective_frames(Inbox inbox, list rings, list running, list posted,
                                   list unexpected, uint64_t eager_limit, list tx,
                                   dict awaiting_ack, dict services,
                                   dict awaiting_cts) except -2:
    """The frames in the inbox when only collectives are running:
    acknowledgements complete the sends awaiting them, eager frames and
    rendezvous announcements are
    delivered or set aside (_set_aside), and one on the context of a
    running collective that no receive takes yet, with nothing behind it,
    stays in its ring for the collective's own receive.  Returns how many
    were handled, or -1 when some other frame is next in a ring."""
    cdef int i = inbox.first_ready(0), step
    cdef Py_ssize_t delivered = 0
    cdef RxRing rx
    while i >= 0:
        rx = <RxRing?>rings[i]
        while rx.poll():
            if rx.kind == 6:
                if not _take_ack(rx, awaiting_ack):
                    return -1               # the engine reports the stray ACK
                delivered += 1
                continue
            step = _set_aside(rx, posted, unexpected, eager_limit, <TxRing?>tx[rx.peer],
                              running, services, awaiting_cts)
            if step < 0:
                return -1
            if step == 0:
                break
            delivered += 1
        i = inbox.first_ready(i + 1)
    return delivered


cdef int _set_aside(RxRing rx, list posted, list unexpected, uint64_t eager_limit, TxRing tx,
                    list running, dict services, dict awaiting_cts) except -2:
    """The frame at the head of rx, which a probe or a test is not looking
    for, moved out of the way as the engine's round would move it, so that
    what came after it in rx can be seen.  An eager frame goes into the
    first posted receive that matches it (a synchronous one acknowledged on
    tx), or to the unexpected messages; a rendezvous announcement (RTS) no
    posted receive matches goes to the unexpected messages, with the
    engine's checks; a CTS saying a send of ours was copied completes it.
    1: moved; 0: left in the ring, an eager frame on the context of a
    nonblocking collective in progress with nothing behind it, which the
    collective's own receive takes from there; -1: the engine's round must
    handle it (another kind, an RTS a posted receive matches, a bad tag,
    length or announcement, a window's service frame, a payload too large
    for its receive, no room for the ACK)."""
    cdef uint64_t address = 0
    if rx.kind == 4:
        return 1 if _take_copied_cts(rx, awaiting_cts) else -1
    if rx.tag < 0 or (services and rx.context in services):
        return -1
    if rx.kind == 3:
        if not _rts_address(rx, &address) or not _rts_total_ok(rx, eager_limit):
            return -1
        for op in posted:
            if _accepts_head(<RecvOp?>op, rx):
                return -1
        unexpected.append(_new_incoming(rx.peer, rx.tag, rx.context, rx.a, None, rx.b, 3,
                                        address))
        rx.consume()
        return 1
    if (rx.kind != 1 and rx.kind != 2) or rx.length > eager_limit:
        return -1
    for op in posted:
        if _accepts_head(<RecvOp?>op, rx):
            return 1 if _deliver_eager(rx, posted, eager_limit, tx) else -1
    if rx.kind == 1 and not rx.more_behind():
        # Left only while nothing follows it: a frame left in front of
        # another would hide that one from every probe and test until the
        # collective takes it, which may wait for what is behind.
        for s in running:
            if isinstance(s, Schedule) and (<Schedule>s).context == rx.context:
                return 0
    unexpected.append(_new_incoming(rx.peer, rx.tag, rx.context, rx.length, rx.payload(),
                                    rx.b, rx.kind))
    rx.consume()
    return 1


def idle_progress(EngineCore core not None):
    """_idle_progress for Engine.test_progress."""
    return _idle_progress(core, _frames_taken)


cdef int _poll_request(object req, object op) except -1:
    """One round of progress for a test: a poll of the peer's ring (or the
    library operation) in C first, the engine's whole progress if the
    operation is still not done (which also moves everything else, as a
    test must; with more ranks than cores, when nothing moved, it gives
    the core away: Engine.test_progress).  1 when nothing moved at all (no
    request can have completed: the test need not look again), else 0."""
    cdef EngineCore core = None
    cdef int idle, polled = -1      # -1: not polled in C, or the engine's round is needed
    cdef unsigned long long taken = _frames_taken
    comm = req._comm
    fast = getattr(comm, "_fast", None)
    if type(fast) is FastPath:
        if type(op) is LibraryRecv or type(op) is LibrarySend:
            if _spin(op, 1):
                return 0
        else:
            polled = (<FastPath>fast)._poll_op(op, 0)
            if polled >= 0 and (<Op>op).done:
                return 0
        core = (<FastPath>fast).core
    if core is None:
        core = comm._engine.core
    idle = _idle_progress(core, taken)
    if idle == 1:
        # _poll_op's -1 for an operation it does not poll (a collective's)
        # is no sign of movement; for a library operation nothing is known.
        return 1 if polled == 0 or type(op) is Schedule else 0
    if not idle:
        core.engine.test_round()
    return 0


cdef bint _poll_any(object requests, int rounds) except -1:
    """Poll the peers of the pending requests in C, round after round,
    until one is done (True) or `rounds` rounds pass, or a request is of a
    kind only the engine's progress advances (False).  With more ranks
    than cores (negative spins) a few rounds only: the engine's wait
    yields the core between its polls."""
    cdef int k = 0
    while k < rounds:
        for req in requests:
            op = req._op
            if op is None:
                continue
            if _op_done(op):
                return True
            fast = getattr(req._comm, "_fast", None)
            if type(fast) is not FastPath or (<FastPath>fast)._poll_op(op, 0) < 0:
                return False
            if (<Op>op).done:
                return True
            if (<FastPath>fast).spins < 0 and rounds > 8:
                rounds = 8
        k += 1
    return False


cdef Py_ssize_t _scan(object requests, Py_ssize_t *active, Py_ssize_t *waiting,
                      Py_ssize_t *pending, list done=None) except -2:
    """Index of the first active request that is done (-1: none); active
    and waiting (not done) counts, and the index of the first waiting;
    done, when given, gets the index of every active request that is done."""
    cdef Py_ssize_t i = 0, first = -1
    active[0] = waiting[0] = 0
    pending[0] = -1
    for req in requests:
        op = req._op
        if op is not None:
            active[0] += 1
            if _op_done(op):
                if first < 0:
                    first = i
                if done is not None:
                    done.append(i)
            else:
                waiting[0] += 1
                if pending[0] < 0:
                    pending[0] = i
        i += 1
    return first


cdef bint _complete_plain(object req) except -1:
    """Complete a done request without a status: False when its operation
    failed (the Python method reports that)."""
    if req._op.error is not None:
        return False
    req._op = None
    return True


def request_Test(self, status=None):
    op = self._op
    if status is not None or op is None or not _testable(self):
        return _py_Test(self, status)
    if not _op_done(op):
        if _poll_request(self, op) or not _op_done(op):
            return False
    if op.error is not None:
        return _py_Test(self, status)       # reports the error
    self._op = None
    return True


def request_Testall(cls, requests, statuses=None):
    cdef Py_ssize_t active, waiting, pending
    if statuses is not None or not _testable_requests(requests):
        return _py_Testall(cls, requests, statuses)
    _scan(requests, &active, &waiting, &pending)
    if waiting:
        req = requests[pending]
        if _poll_request(req, req._op):
            return False
        _scan(requests, &active, &waiting, &pending)
        if waiting:
            return False
    for req in requests:
        op = req._op
        if op is not None and op.error is not None:
            return _py_Testall(cls, requests, statuses)     # completes all, then raises
    for req in requests:
        if req._op is not None:
            req._op = None
    return True


def request_Waitany(cls, requests, status=None):
    cdef Py_ssize_t active, waiting, pending, first
    if status is not None or not _plain_requests(requests):
        return _py_Waitany(cls, requests, status)
    first = _scan(requests, &active, &waiting, &pending)
    if not active:
        return _UNDEFINED
    if first < 0:
        if waiting > 1:
            # Their peers polled in C for a while, then the engine's wait.
            if not _poll_any(requests, _ANY_ROUNDS):
                return _py_Waitany(cls, requests, status)
            first = _scan(requests, &active, &waiting, &pending)
        else:
            # One to wait for: the single request's wait, with its polls in C.
            req = requests[pending]
            _await(req, req._op, OneOf("Waitany", len(requests), req))
            first = pending
    if not _complete_plain(requests[first]):
        return _py_Waitany(cls, requests, status)
    return first


def request_Testany(cls, requests, status=None):
    cdef Py_ssize_t active, waiting, pending, first
    if status is not None or not _testable_requests(requests):
        return _py_Testany(cls, requests, status)
    first = _scan(requests, &active, &waiting, &pending)
    if not active:
        return _UNDEFINED, True
    if first < 0:
        req = requests[pending]
        if _poll_request(req, req._op):
            return _UNDEFINED, False
        first = _scan(requests, &active, &waiting, &pending)
        if first < 0:
            return _UNDEFINED, False
    if not _complete_plain(requests[first]):
        return _py_Testany(cls, requests, status)
    return first, True


cdef object _complete_done(object requests):
    """Complete every active request that is done: their indices, or None
    when one failed (nothing completed: the Python method reports it)."""
    cdef list done = []
    cdef Py_ssize_t active, waiting, pending
    _scan(requests, &active, &waiting, &pending, done)
    for i in done:
        if requests[i]._op.error is not None:
            return None
    for i in done:
        requests[i]._op = None
    return done


def request_Waitsome(cls, requests, statuses=None):
    cdef Py_ssize_t active, waiting, pending, first
    if statuses is not None or not _plain_requests(requests):
        return _py_Waitsome(cls, requests, statuses)
    first = _scan(requests, &active, &waiting, &pending)
    if not active:
        return None
    if first < 0:
        if waiting > 1:
            if not _poll_any(requests, _ANY_ROUNDS):
                return _py_Waitsome(cls, requests, statuses)
        else:
            req = requests[pending]
            _await(req, req._op, OneOf("Waitsome", len(requests), req))
    done = _complete_done(requests)
    return done if done is not None else _py_Waitsome(cls, requests, statuses)


def request_Testsome(cls, requests, statuses=None):
    cdef Py_ssize_t active, waiting, pending, first
    if statuses is not None or not _testable_requests(requests):
        return _py_Testsome(cls, requests, statuses)
    first = _scan(requests, &active, &waiting, &pending)
    if not active:
        return None
    if first < 0:
        req = requests[pending]
        _poll_request(req, req._op)
    done = _complete_done(requests)
    return done if done is not None else _py_Testsome(cls, requests, statuses)


cdef object _py_waitall = None
cdef object _py_test = None


def set_object_completions(waitall, test):
    """The Python methods request_waitall and request_test hand the rest to."""
    global _py_waitall, _py_test
    _py_waitall, _py_test = waitall, test


cdef inline object _decoded(object req, object op):
    """What a completed request's wait() returns: its object, or None (an
    empty message is None, as mpi4py unpickles it)."""
    decode = req._decode
    if decode is None or op.cancelled or not op.data:
        return None
    return decode(op)


def request_waitall(cls, requests, statuses=None):
    if statuses is not None or not _plain_requests(requests):
        return _py_waitall(cls, requests, statuses)
    for req in requests:
        op = req._op
        if op is not None and not _op_done(op):
            _await(req, op)
    for req in requests:
        op = req._op
        if op is not None and op.error is not None:
            return _py_waitall(cls, requests, statuses)     # completes all, then raises
    results = []
    for req in requests:
        op = req._op
        if op is None:
            results.append(None)
        else:
            req._op = None
            results.append(_decoded(req, op))
    return results


def request_test(self, status=None):
    op = self._op
    if status is not None or op is None or (type(self) is not _Request
                                            and type(self) is not _Prequest):
        return _py_test(self, status)
    if not _op_done(op):
        if _poll_request(self, op) or not _op_done(op):
            return False, None
    if op.error is not None:
        return _py_test(self, status)       # reports the error
    self._op = None
    return True, _decoded(self, op)

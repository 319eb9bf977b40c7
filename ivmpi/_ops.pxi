# The progress engine's operation records (ivmpi/engine.py), as C types:
# a receive is created and completed in a few field stores, and the
# Cython fast paths read and write these fields without attribute lookups.


cdef class Op:
    """Base of the engine's operations; the communicator wraps them in Requests."""
    cdef public bint done
    cdef public object error
    cdef public object peer
    # World ranks whose death ends this wait too (the members of a
    # collective): a rank waiting on a live partner in a collective that a
    # dead rank can never finish must hear of that death.
    cdef public object scope

    def __init__(self, peer):
        self.peer = peer


cdef class SendOp(Op):
    cdef public object mem
    cdef public long tag
    cdef public long context
    cdef public bint sync
    cdef public object send_id
    cdef public object offset
    cdef public str state

    def __init__(self, dest, mem, long tag, long context, sync):
        self.peer = dest
        self.mem = mem
        self.tag = tag
        self.context = context
        self.sync = sync
        self.send_id = 0
        self.offset = 0
        self.state = "new"


cdef class RecvOp(Op):
    """A posted receive.  `mem` is a writable byte view, or None to allocate
    a buffer of the message's size on match (object receives).  source and
    tag use -1 for ANY_SOURCE / ANY_TAG (the engine's wildcards)."""
    cdef public long source
    cdef public long tag
    cdef public long context
    cdef public object mem
    cdef public long status_source
    cdef public long status_tag
    cdef public object count
    cdef public object received
    cdef public object total
    cdef public bint cancelled
    cdef public object data
    cdef public bint discard
    # An object receive's buffer offered by the caller (mpi4py's irecv(buf)):
    # a message too large for the eager path goes there if it fits
    # (object_room), as mpi4py's receives into it; anything else gets a
    # buffer of its own.
    cdef public object hint

    def __init__(self, long source, long tag, long context, mem):
        self.peer = source
        self.source = source
        self.tag = tag
        self.context = context
        self.mem = mem
        self.status_source = -1
        self.status_tag = -1
        self.count = 0
        self.received = 0
        self.total = 0


cdef class Incoming:
    """A message that arrived before any receive matched it (the engine's
    unexpected queue, a matched probe's message).  A C type: a probe
    makes one per message found."""
    cdef public object source
    cdef public object tag
    cdef public object context
    cdef public object size
    cdef public object data         # payload (eager) or None (rendezvous)
    cdef public object send_id
    cdef public object kind
    cdef public object self_send    # the SendOp of a synchronous send to ourselves
    cdef public object offset       # RTS_REGION: where the payload sits in the sender's heap
    cdef public bint taken          # a matched probe's message has been received

    def __init__(self, source, tag, context, size, data, send_id, kind, self_send=None,
                 offset=0):
        self.source = source
        self.tag = tag
        self.context = context
        self.size = size
        self.data = data
        self.send_id = send_id
        self.kind = kind
        self.self_send = self_send
        self.offset = offset
        self.taken = False


cdef Incoming _new_incoming(object source, object tag, object context, object size,
                            object data, object send_id, object kind, object offset=0):
    """Incoming(...) of a frame a matched probe takes, without the Python call."""
    cdef Incoming msg = Incoming.__new__(Incoming)
    msg.source = source
    msg.tag = tag
    msg.context = context
    msg.size = size
    msg.data = data
    msg.send_id = send_id
    msg.kind = kind
    msg.self_send = None
    msg.offset = offset
    msg.taken = False
    return msg


cpdef object object_room(RecvOp op, uint64_t size):
    """Where an object receive's message of size bytes goes if the caller
    offered a buffer that holds it (a writable contiguous one): a byte view
    of its first size bytes, else None (a buffer of its own then).  Its
    memory is the caller's, already touched, where a new buffer's pages
    fault in as the message is copied."""
    hint = op.hint
    if hint is None:
        return None
    try:
        room = memoryview(hint)
        if room.readonly or not room.c_contiguous or <uint64_t>room.nbytes < size:
            return None
        return room.cast("B")[:size]
    except (TypeError, ValueError, BufferError):
        return None


cdef RecvOp _new_recv_op(long source, long tag, long context, object mem):
    """RecvOp(source, tag, context, mem) without the Python call."""
    cdef RecvOp op = RecvOp.__new__(RecvOp)
    op.peer = source
    op.source = source
    op.tag = tag
    op.context = context
    op.mem = mem
    op.status_source = -1
    op.status_tag = -1
    op.count = 0
    op.received = 0
    op.total = 0
    return op

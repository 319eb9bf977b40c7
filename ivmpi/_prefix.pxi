# Prefix reductions (Scan, Exscan) and reduce-scatter, streamed in segments
# (included by _fastcopy.pyx after _small_collectives.pxi, whose
# SmallCollectives calls these).
#
# A message of these collectives travels as a train of eager frames of at
# most one segment each (stream_segment), never as a rendezvous: the
# receiver takes segment k out of the ring while the sender writes segment
# k+1, and combines it with its own data straight from the ring into the
# destination (a few KiB at a time through a private buffer that stays in
# the cache: the region is only ever read by the copy core), so no whole
# message is copied in or out of a private buffer on the way.
#
# The algorithms (ivmpi.collectives and ivmpi.nbcoll send the same
# messages, so ranks may mix the paths):
#   Scan/Exscan     two ranks or more than one segment: a chain, rank r
#                   receives the prefix of ranks 0..r-1 from r-1 and sends
#                   the prefix of 0..r on to r+1, segment by segment;
#                   otherwise recursive doubling (the last round one way).
#   Reduce_scatter  every rank sends block j of its input to rank j, and
#                   each rank reduces its own block of all the inputs in
#                   rank order (x0 op (x1 op (... op xp-1))), segment k of
#                   every block sent before segment k is received.

cdef enum:
    _PIECE_BYTES = 4096          # taken out of the ring at a time before combining
    _PIECE_WORDS = 512           # _PIECE_BYTES / 8 (a C array size: no '//' here)
    _SEGMENT_SMALL = 16384       # messages up to _SMALL_MESSAGE: segments of 16 KiB
    _SMALL_MESSAGE = 131072
    _SEGMENT_LARGE = 65536       # larger ones: fewer, longer frames (fewer schedule steps)


cpdef Py_ssize_t stream_segment(Py_ssize_t nbytes, Py_ssize_t extent,
                                Py_ssize_t eager_limit) except -1:
    """Bytes per segment of a streamed message of nbytes made of elements
    of `extent` bytes (whole elements, at most the eager limit when an
    element fits it).  Every rank computes the same from the same sizes."""
    cdef Py_ssize_t seg
    if extent <= 0:
        raise ValueError(f"element extent {extent}")
    seg = _SEGMENT_SMALL if nbytes <= _SMALL_MESSAGE else _SEGMENT_LARGE
    if seg > eager_limit:
        seg = eager_limit
    seg = seg // extent * extent
    return seg if seg > 0 else extent


cpdef Py_ssize_t prefix_segment(long size, long rank, list world, Py_ssize_t nbytes,
                                Py_ssize_t extent, Py_ssize_t eager_limit) except -1:
    """Bytes per segment of a prefix chain: on two ranks where rank 1
    copies rank 0's messages from its memory (world: the communicator's
    world ranks), the whole message in one piece, one copy straight from
    rank 0's buffer (segments would be a rendezvous each, and eager ones
    cross between cores twice: on some hosts several times one copy);
    else stream_segment.  Both ranks compute the same."""
    if size == 2 and nbytes > 0 and (_sc_tell(world[1]) if rank == 0 else _sc_from(world[0])):
        return nbytes
    return stream_segment(nbytes, extent, eager_limit)


cpdef bint pair_copies(long size, long rank, list world) except -1:
    """Two ranks, each copying the other's messages from its memory
    (world: the communicator's world ranks): their large reductions
    exchange whole inputs, each copied once straight from its owner's
    buffer (Collectives._pair_reduce).  Both ranks answer the same."""
    if size != 2:
        return False
    cdef Py_ssize_t other = world[1 - rank]
    return _sc_tell(other) and _sc_from(other)


cpdef Py_ssize_t pair_segment(long size, long rank, list world, Py_ssize_t nbytes,
                              Py_ssize_t extent, Py_ssize_t eager_limit) except -1:
    """Bytes per segment of a reduce-scatter's block: on a pair_copies
    pair, the whole block in one message from the caller's buffer; else
    stream_segment.  Both ranks compute the same."""
    if nbytes > 0 and pair_copies(size, rank, world):
        return nbytes
    return stream_segment(nbytes, extent, eager_limit)


cdef long _chain_max_ranks = 4     # one segment: a chain on this many ranks or fewer


def set_prefix_chain_max_ranks(long ranks):
    """Prefix reductions of one segment run as a chain on up to `ranks`
    ranks, by recursive doubling on more (default 4; every rank must set
    the same).  Returns the previous value: tests run both algorithms on
    few ranks."""
    global _chain_max_ranks
    previous, _chain_max_ranks = _chain_max_ranks, ranks
    return previous


def prefix_chained(long size, Py_ssize_t nbytes, Py_ssize_t segment):
    """Does a prefix reduction run as a chain (else recursive doubling)?
    More than one segment, or a few ranks: Open MPI's linear scan.  Calls
    in a row pipeline along a chain (rank 0 sends and is done), where
    doubling makes every rank wait for its partners in each of log2(size)
    rounds (8 B on 4 ranks: 0.7-1.1 us a call against 3.2-4.2); on many
    ranks the chain's length costs more."""
    return nbytes > segment or size <= max(_chain_max_ranks, 2)


# out = lower (op) higher, element-wise, one plain loop per op and type that
# the compiler vectorizes (out may be lower or higher itself, index for
# index: each element is read before it is written; it never overlaps
# otherwise).  Which ops a type takes is op_applies' to say (the others
# leave out untouched).  The logical ops give 0 or 1, as C's && and || do
# (and Open MPI), without their branches, which do not vectorize.  MAX/MIN pick as _combine does, so NaN and -0.0 come out the same.
# MAXLOC/MINLOC on the pairs {value v; int index k}: lower if its value
# wins, else higher's value, with the smaller index of the two on a tie
# (the bits of the library's Reduce_local, lower being its input and
# higher its inout).  Only v and k are written, never a struct's padding.
cdef extern from *:
    """
    #define IVMPI_LOOP(EXPR) for (i = 0; i < n; i++) out[i] = (EXPR); break;
    #define IVMPI_ARITH                                                            \
        case 1: IVMPI_LOOP(lower[i] + higher[i])                                   \
        case 2: IVMPI_LOOP(lower[i] * higher[i])
    #define IVMPI_ORDER                                                            \
        case 3: IVMPI_LOOP(lower[i] >= higher[i] ? lower[i] : higher[i])           \
        case 4: IVMPI_LOOP(lower[i] <= higher[i] ? lower[i] : higher[i])
    #define IVMPI_LOGIC                                                            \
        case 5: IVMPI_LOOP((lower[i] != 0) & (higher[i] != 0))                     \
        case 7: IVMPI_LOOP((lower[i] != 0) | (higher[i] != 0))                     \
        case 9: IVMPI_LOOP((lower[i] != 0) ^ (higher[i] != 0))
    #define IVMPI_BITS                                                             \
        case 6: IVMPI_LOOP(lower[i] & higher[i])                                   \
        case 8: IVMPI_LOOP(lower[i] | higher[i])                                   \
        case 10: IVMPI_LOOP(lower[i] ^ higher[i])
    #define IVMPI_FUNC(T, NAME, CASES)                                             \
    static void NAME(int op, T *restrict out, const T *lower, const T *higher,     \
                     Py_ssize_t n) {                                               \
        Py_ssize_t i;                                                              \
        switch (op) { CASES default: break; }                                      \
    }
    #define IVMPI_INTEGER IVMPI_ARITH IVMPI_ORDER IVMPI_LOGIC IVMPI_BITS
    IVMPI_FUNC(double, ivmpi_prefix_f64, IVMPI_ARITH IVMPI_ORDER)
    IVMPI_FUNC(float, ivmpi_prefix_f32, IVMPI_ARITH IVMPI_ORDER)
    IVMPI_FUNC(int64_t, ivmpi_prefix_i64, IVMPI_INTEGER)
    IVMPI_FUNC(int32_t, ivmpi_prefix_i32, IVMPI_INTEGER)
    IVMPI_FUNC(int16_t, ivmpi_prefix_i16, IVMPI_INTEGER)
    IVMPI_FUNC(int8_t, ivmpi_prefix_i8, IVMPI_INTEGER)
    IVMPI_FUNC(uint64_t, ivmpi_prefix_u64, IVMPI_INTEGER)
    IVMPI_FUNC(uint32_t, ivmpi_prefix_u32, IVMPI_INTEGER)
    IVMPI_FUNC(uint16_t, ivmpi_prefix_u16, IVMPI_INTEGER)
    IVMPI_FUNC(uint8_t, ivmpi_prefix_u8, IVMPI_INTEGER)
    IVMPI_FUNC(float _Complex, ivmpi_prefix_c64, IVMPI_ARITH)
    IVMPI_FUNC(double _Complex, ivmpi_prefix_c128, IVMPI_ARITH)
    IVMPI_FUNC(unsigned char, ivmpi_prefix_bool, IVMPI_LOGIC)
    /* Half floats where the compiler has them: each operation's result is
       rounded to half once, as the library's own _Float16 loops round it.
       long double: the C type the library's loops use too. */
    #if defined(__FLT16_MAX__)
    #define IVMPI_HAVE_FLOAT16 1
    IVMPI_FUNC(_Float16, ivmpi_prefix_f16, IVMPI_ARITH IVMPI_ORDER)
    #else
    #define IVMPI_HAVE_FLOAT16 0
    #endif
    IVMPI_FUNC(long double, ivmpi_prefix_ld, IVMPI_ARITH IVMPI_ORDER)

    #define IVMPI_LOC_LOOP(V, WINS)                                                \
        for (i = 0; i < n; i++) {                                                  \
            V a = lower[i].v, b = higher[i].v;                                     \
            int ka = lower[i].k, kb = higher[i].k;                                 \
            int take = a WINS b;                                                   \
            out[i].v = take ? a : b;                                               \
            out[i].k = take || (a == b && ka < kb) ? ka : kb;                      \
        } break;
    /* (No restrict: out may be lower or higher.) */
    #define IVMPI_PAIR(V, T, NAME)                                                 \
    typedef struct { V v; int k; } T;                                              \
    static void NAME(int op, T *out, const T *lower, const T *higher,              \
                     Py_ssize_t n) {                                               \
        Py_ssize_t i;                                                              \
        switch (op) {                                                              \
        case 11: IVMPI_LOC_LOOP(V, >)                                              \
        case 12: IVMPI_LOC_LOOP(V, <)                                              \
        default: break;                                                            \
        }                                                                          \
    }
    IVMPI_PAIR(double, ivmpi_double_int, ivmpi_loc_double_int)
    IVMPI_PAIR(float, ivmpi_float_int, ivmpi_loc_float_int)
    IVMPI_PAIR(long, ivmpi_long_int, ivmpi_loc_long_int)
    IVMPI_PAIR(int, ivmpi_2int, ivmpi_loc_2int)
    IVMPI_PAIR(short, ivmpi_short_int, ivmpi_loc_short_int)

    static void ivmpi_combine3(int op, int typ, char *out, const char *lower,
                               const char *higher, Py_ssize_t n) {
        switch (typ) {
        case 1: ivmpi_prefix_f64(op, (double *)out, (const double *)lower,
                                 (const double *)higher, n); break;
        case 2: ivmpi_prefix_f32(op, (float *)out, (const float *)lower,
                                 (const float *)higher, n); break;
        case 3: ivmpi_prefix_i64(op, (int64_t *)out, (const int64_t *)lower,
                                 (const int64_t *)higher, n); break;
        case 4: ivmpi_prefix_i32(op, (int32_t *)out, (const int32_t *)lower,
                                 (const int32_t *)higher, n); break;
        case 5: ivmpi_prefix_i16(op, (int16_t *)out, (const int16_t *)lower,
                                 (const int16_t *)higher, n); break;
        case 6: ivmpi_prefix_i8(op, (int8_t *)out, (const int8_t *)lower,
                                (const int8_t *)higher, n); break;
        case 7: ivmpi_prefix_u64(op, (uint64_t *)out, (const uint64_t *)lower,
                                 (const uint64_t *)higher, n); break;
        case 8: ivmpi_prefix_u32(op, (uint32_t *)out, (const uint32_t *)lower,
                                 (const uint32_t *)higher, n); break;
        case 9: ivmpi_prefix_u16(op, (uint16_t *)out, (const uint16_t *)lower,
                                 (const uint16_t *)higher, n); break;
        case 10: ivmpi_prefix_u8(op, (uint8_t *)out, (const uint8_t *)lower,
                                 (const uint8_t *)higher, n); break;
        case 11: ivmpi_prefix_c64(op, (float _Complex *)out, (const float _Complex *)lower,
                                  (const float _Complex *)higher, n); break;
        case 12: ivmpi_prefix_c128(op, (double _Complex *)out, (const double _Complex *)lower,
                                   (const double _Complex *)higher, n); break;
        case 13: ivmpi_prefix_bool(op, (unsigned char *)out, (const unsigned char *)lower,
                                   (const unsigned char *)higher, n); break;
        case 14: ivmpi_loc_double_int(op, (ivmpi_double_int *)out,
                                      (const ivmpi_double_int *)lower,
                                      (const ivmpi_double_int *)higher, n); break;
        case 15: ivmpi_loc_float_int(op, (ivmpi_float_int *)out, (const ivmpi_float_int *)lower,
                                     (const ivmpi_float_int *)higher, n); break;
        case 16: ivmpi_loc_long_int(op, (ivmpi_long_int *)out, (const ivmpi_long_int *)lower,
                                    (const ivmpi_long_int *)higher, n); break;
        case 17: ivmpi_loc_2int(op, (ivmpi_2int *)out, (const ivmpi_2int *)lower,
                                (const ivmpi_2int *)higher, n); break;
        case 18: ivmpi_loc_short_int(op, (ivmpi_short_int *)out, (const ivmpi_short_int *)lower,
                                     (const ivmpi_short_int *)higher, n); break;
    #if IVMPI_HAVE_FLOAT16
        case 19: ivmpi_prefix_f16(op, (_Float16 *)out, (const _Float16 *)lower,
                                  (const _Float16 *)higher, n); break;
    #endif
        case 20: ivmpi_prefix_ld(op, (long double *)out, (const long double *)lower,
                                 (const long double *)higher, n); break;
        default: break;
        }
    }
    """
    void _combine3 "ivmpi_combine3"(int op, int typ, char *out, const char *lower,
                                    const char *higher, Py_ssize_t n) nogil
    int IVMPI_HAVE_FLOAT16
    # The pairs' structs, for their sizes (_item_bytes).
    ctypedef struct ivmpi_double_int:
        double v
        int k
    ctypedef struct ivmpi_float_int:
        float v
        int k
    ctypedef struct ivmpi_long_int:
        long v
        int k
    ctypedef struct ivmpi_2int:
        int v
        int k
    ctypedef struct ivmpi_short_int:
        short v
        int k


cdef void _apply(const char *src, bint region, int strict, char *dst, char *acc,
                 const char *other, bint theirs_higher, Py_ssize_t m, int code,
                 int typ) noexcept nogil:
    """What a received segment of m bytes at src is for: dst = segment
    (dst not NULL) and acc = segment (op) other (acc not NULL; other NULL:
    acc itself; theirs_higher: other (op) segment).  src in the region is
    read by the copy core only, a piece at a time; other may be acc or dst
    (each piece is read before it is written)."""
    cdef double piece[_PIECE_WORDS]        # 8-byte aligned for the combine
    cdef const char *at
    cdef const char *mine
    cdef Py_ssize_t o = 0, k, item = _item_bytes(typ)
    if acc == NULL:
        if region:
            rg_copy_from(dst, src, m, strict)
        else:
            ivmpi_copy_plain(dst, src, m)
        return
    while o < m:
        k = m - o
        if k > _PIECE_BYTES:
            k = _PIECE_BYTES
        if region:
            rg_copy_from(<char *>piece, src + o, k, strict)
            at = <const char *>piece
        else:
            at = src + o
        mine = (acc if other == NULL else other) + o
        if theirs_higher:
            _combine3(code, typ, acc + o, mine, at, k // item)
        else:
            _combine3(code, typ, acc + o, at, mine, k // item)
        if dst != NULL:
            ivmpi_copy_plain(dst + o, at, k)
        o += k


cdef int stream_take(SmallCollectives c, char *dst, char *acc, const char *other,
                     Py_ssize_t m, long source, long tag, int code, int typ,
                     bint theirs_higher=False) except -1:
    """Receive one segment of m bytes from source and _apply it: straight
    from the ring when its frame is next there, else through the
    communicator's own receive into a private buffer."""
    cdef FastPath fast = c.fast
    cdef RxRing rx
    cdef bint done = False
    cdef char *private
    if fast.lock.enter():
        try:
            if not fast.unexpected:
                ring = fast._ready_ring(source, tag, fast.spins)
                # A frame of another length is the general path's to report.
                if ring is not None and (<RxRing>ring).length == <uint64_t>m:
                    rx = <RxRing>ring
                    rx.wait_filled(rx.length)      # read in place below
                    if m >= _NOGIL_MIN:
                        with nogil:
                            _apply(rx.data + rx.pos + _HDR, True, rx.strict, dst, acc, other,
                                   theirs_higher, m, code, typ)
                    else:
                        _apply(rx.data + rx.pos + _HDR, True, rx.strict, dst, acc, other,
                               theirs_higher, m, code, typ)
                    fast.last_tag = rx.tag
                    fast._consume(rx)
                    done = True
        finally:
            fast.lock.leave()
    if not done:
        private = c._scratch(2, m)
        c.recv_slow(PyMemoryView_FromMemory(private, m, PyBUF_WRITE), source, tag)
        _apply(private, False, 0, dst, acc, other, theirs_higher, m, code, typ)
    return 0


cdef int stream_give(SmallCollectives c, const char *data, Py_ssize_t m, long dest,
                     long tag) except -1:
    """Send one segment: an eager frame, waiting a little for room in a
    full ring (the receiver is taking the previous segments out), else the
    communicator's own send."""
    if c.fast.send_ptr_patient(data, m, dest, tag):
        return 0
    c.send_slow(PyMemoryView_FromMemory(<char *>data, m, PyBUF_READ), dest, tag)
    return 0


cdef int prefix_chain(SmallCollectives c, const char *data, char *recv, Py_ssize_t n,
                      Py_ssize_t seg, int code, int typ, bint inclusive, long tag) except -1:
    """The chain: rank r takes the prefix of ranks 0..r-1 from r-1 and
    sends that of 0..r to r+1, one segment at a time.  data may be recv
    (IN_PLACE)."""
    cdef long rank = c.rank, size = c.size
    cdef Py_ssize_t o, m
    cdef char *out
    cdef bint last = rank == size - 1
    if rank == 0:
        # The caller's own bytes: the segments rank 1 copies from our memory
        # are announced, all of them, then waited for (SmallCollectives._give).
        announced = []
        try:
            o = 0
            while o < n:
                m = min(seg, n - o)
                op = c.fast.announce_step(data + o, m, 1, tag) if c.give_copies else None
                if op is None:
                    stream_give(c, data + o, m, 1, tag)
                else:
                    announced.append(op)
                o += m
        finally:
            for op in announced:
                c.fast.finish(op, "a collective's step")
        if inclusive and recv != data:
            ivmpi_copy_plain(recv, data, n)
        return 0
    out = NULL if last or inclusive else c._scratch(1, seg)
    o = 0
    while o < n:
        m = min(seg, n - o)
        if inclusive:
            # recv = theirs op mine
            stream_take(c, NULL, recv + o, NULL if recv == data else data + o, m,
                        rank - 1, tag, code, typ)
            if not last:
                stream_give(c, recv + o, m, rank + 1, tag)
        elif last:
            c._recv(recv + o, m, rank - 1, tag)     # (straight in, whatever the frame)
        else:
            # recv = theirs; what goes on = theirs op mine (mine read first: IN_PLACE)
            stream_take(c, recv + o, out, data + o, m, rank - 1, tag, code, typ)
            stream_give(c, out, m, rank + 1, tag)
        o += m
    return 0


cdef int _pair_reduce_scatter(SmallCollectives c, const char *data, char *target,
                              Py_ssize_t *off, Py_ssize_t *length, Py_ssize_t item, int code,
                              int typ, long tag) except -1:
    """reduce_scatter_stream on a pair_copies pair: our block for the
    other rank announced whole from the caller's buffer (pair_segment),
    theirs received straight into target, then combined with ours."""
    cdef long rank = c.rank, peer = 1 - c.rank
    cdef Py_ssize_t mine = length[rank]
    op = request = None
    if length[peer] > 0:
        # (Eager within the limit where ranks wait for cores: give_copies.)
        if c.give_copies or <uint64_t>length[peer] > c.eager_limit:
            op = c.fast.announce_step(data + off[peer], length[peer], peer, tag)
        if op is None:
            if <uint64_t>length[peer] <= c.eager_limit:
                stream_give(c, data + off[peer], length[peer], peer, tag)
            else:   # (not announced: a rendezvous of the engine's, waited for below)
                request = c.general.p2p.Isend(
                    PyMemoryView_FromMemory(<char *>data + off[peer], length[peer],
                                            PyBUF_READ), peer, tag)
    try:
        if mine > 0:
            c._recv(target, mine, peer, tag)
            # target = x0 op x1, theirs in target
            _combine(code, typ, target, data + off[rank], mine // item, rank == 1)
    finally:
        if op is not None:
            c.fast.finish(op, "a collective's step")
        if request is not None:
            request.Wait()
    return 0


cdef int reduce_scatter_stream(SmallCollectives c, const char *data, char *target,
                               Py_ssize_t *off, Py_ssize_t *length, Py_ssize_t item, int code,
                               int typ, long tag) except -1:
    """Block j (bytes off[j], length[j] of data) of every rank goes to rank
    j; this rank reduces its own block into target in rank order.  data
    and target do not overlap."""
    cdef long rank = c.rank, size = c.size, j, step
    cdef Py_ssize_t k, nseg_max = 0, nseg, o, m, seg
    cdef Py_ssize_t mine = length[rank], myseg
    cdef Py_ssize_t eager = <Py_ssize_t>c.eager_limit
    cdef const char *own
    if pair_copies(size, rank, c.fast.world_ranks):
        return _pair_reduce_scatter(c, data, target, off, length, item, code, typ, tag)
    for j in range(size):
        seg = stream_segment(length[j], item, eager)
        nseg = (length[j] + seg - 1) // seg
        if nseg > nseg_max:
            nseg_max = nseg
    myseg = stream_segment(mine, item, eager)
    for k in range(nseg_max):
        for step in range(1, size):
            j = (rank + step) % size
            seg = stream_segment(length[j], item, eager)
            o = k * seg
            if o < length[j]:
                stream_give(c, data + off[j] + o, min(seg, length[j] - o), j, tag)
        o = k * myseg
        if o >= mine:
            continue
        m = min(myseg, mine - o)
        # target = x[size-1], then target = x[j] op target, j descending;
        # the first two operands in one pass.
        own = data + off[rank] + o
        j = size - 2
        if rank == size - 1:
            stream_take(c, NULL, target + o, own, m, j, tag, code, typ)
        elif rank == size - 2:
            stream_take(c, NULL, target + o, own, m, size - 1, tag, code, typ, True)
        else:
            stream_take(c, target + o, NULL, NULL, m, size - 1, tag, code, typ)
            stream_take(c, NULL, target + o, NULL, m, j, tag, code, typ)
        for j in range(size - 3, -1, -1):
            if j == rank:
                _combine3(code, typ, target + o, own, target + o, m // item)
            else:
                stream_take(c, NULL, target + o, NULL, m, j, tag, code, typ)
    return 0


cdef class Combine:
    """inout = in (op) inout over count elements of a predefined type, with
    the vectorized loops above: a schedule's CALL step (ivmpi.nbcoll)."""
    cdef object keep_in, keep_out
    cdef char *inout
    cdef const char *other
    cdef Py_ssize_t count
    cdef int code, typ

    def __init__(self, int code, int typ, inmem, inoutmem, Py_ssize_t count):
        cdef Py_buffer view
        cdef Py_ssize_t item = _item_bytes(typ), la, lb
        PyObject_GetBuffer(inoutmem, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
        self.inout, la = <char *>view.buf, view.len
        PyBuffer_Release(&view)
        PyObject_GetBuffer(inmem, &view, PyBUF_SIMPLE)
        self.other, lb = <const char *>view.buf, view.len
        PyBuffer_Release(&view)
        if count < 0 or count * item > min(la, lb):
            raise ValueError(f"{count} elements do not fit the buffers")
        self.keep_in, self.keep_out = inmem, inoutmem     # their memory stays
        self.code, self.typ, self.count = code, typ, count

    def __call__(self):
        _combine3(self.code, self.typ, self.inout, self.other, self.inout, self.count)

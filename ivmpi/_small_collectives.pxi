# The one-call collectives (included by _fastcopy.pyx after _fastpath.pxi,
# whose fast sends and receives they use).

# --- Small collectives ------------------------------------------------------
# Barrier and small reductions in one call: the loop over rounds, the sends
# and receives (FastPath, falling back to the communicator's own Send/Recv
# for any step the fast path cannot take) and, for the common predefined
# operations on plain numbers, the combining step in C.

from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport malloc, free
from cpython.buffer cimport PyBUF_READ, PyBUF_WRITE
from cpython.memoryview cimport PyMemoryView_FromMemory

cdef enum:
    OP_SUM = 1
    OP_PROD = 2
    OP_MAX = 3
    OP_MIN = 4
    OP_LAND = 5
    OP_BAND = 6
    OP_LOR = 7
    OP_BOR = 8
    OP_LXOR = 9
    OP_BXOR = 10
    OP_MAXLOC = 11
    OP_MINLOC = 12

# Past the eager limit and from this many bytes, Reduce and Allreduce stream
# a reduce-scatter and then every block to the root (to every rank): the
# general path (ivmpi.collectives, ivmpi.nbcoll) decides by the same size.
# (Its recursive doubling there took 238 us for 128 KiB on 4 ranks, the
# stream 142 for 256 KiB.)
cdef enum:
    _REDUCE_SCATTER_MIN = 65536

REDUCE_SCATTER_MIN = _REDUCE_SCATTER_MIN

cdef enum:
    T_F64 = 1
    T_F32 = 2
    T_I64 = 3
    T_I32 = 4
    T_I16 = 5
    T_I8 = 6
    T_U64 = 7
    T_U32 = 8
    T_U16 = 9
    T_U8 = 10
    T_C64 = 11          # complex of two floats
    T_C128 = 12         # complex of two doubles
    T_BOOL = 13         # C _Bool, one byte
    # MAXLOC/MINLOC pairs, the C struct {value; int index} (_prefix.pxi):
    T_DOUBLE_INT = 14
    T_FLOAT_INT = 15
    T_LONG_INT = 16
    T_2INT = 17
    T_SHORT_INT = 18
    T_F16 = 19          # half float (_Float16), where the compiler has it
    T_LDOUBLE = 20      # C long double


# A user-defined op (Op.Create) combines through the library, as mpi4py's
# own Reduce_local does: the library calls mpi4py's trampoline, which calls
# the op's Python function on the two buffers.  (The handles are the
# library's pointers, passed as such; _route.pxi declares the same calls
# with their types.)
cdef extern from "mpi.h":
    int _lib_reduce_local "MPI_Reduce_local"(const void *inbuf, void *inoutbuf, int count,
                                              void *datatype, void *op)


cdef int _user_combine(const char *inbuf, char *inoutbuf, Py_ssize_t count, size_t datatype,
                       size_t op) except -1:
    """inoutbuf = inbuf (op) inoutbuf, by the library (GIL held: the op is Python)."""
    cdef int err = _lib_reduce_local(inbuf, inoutbuf, <int>count, <void *>datatype, <void *>op)
    if err != 0:
        raise RuntimeError(f"ivmpi: MPI_Reduce_local failed (error {err})")
    return 0


cdef int _combine_user(char *acc, char *theirs, Py_ssize_t n, Py_ssize_t count,
                       size_t datatype, size_t op, bint acc_is_lower) except -1:
    """_combine's acc = lower (op) higher with a user-defined op, whose
    library call writes its second operand: theirs (n bytes of scratch)
    takes the result when acc is the lower, then acc gets it."""
    if acc_is_lower:
        _user_combine(acc, theirs, count, datatype, op)
        ivmpi_move_plain(acc, theirs, n)
    else:
        _user_combine(theirs, acc, count, datatype, op)
    return 0


cdef void _combine(int op, int typ, char *acc, const char *other, Py_ssize_t n,
                   bint acc_is_lower) noexcept nogil:
    # acc = lower (op) higher, element-wise, where lower is the value from the
    # lower rank: both partners of a round then compute bit-identical results,
    # even for -0.0/+0.0 and NaN under MAX/MIN.  The vectorized loops of
    # _combine3, acc one of their operands (a loop with the op and the
    # order tested per element ran element by element: 1 MiB 70 us slower).
    if acc_is_lower:
        _combine3(op, typ, acc, acc, other, n)
    else:
        _combine3(op, typ, acc, other, acc, n)


cdef bytearray _EMPTY = bytearray(0)     # the barrier's message: nothing


cdef int small_barrier(FastPath fast, long rank, long size, long tag, int spins,
                       object send_slow, object recv_slow) except -1:
    """Dissemination barrier: round k sends to rank + 2^k, receives from rank - 2^k."""
    cdef long distance = 1
    cdef bytearray empty = _EMPTY
    cdef char nothing = 0
    while distance < size:
        # Pointer calls: no buffer spec to look at for an empty message.
        if not fast.send_ptr(&nothing, 0, (rank + distance) % size, tag):
            send_slow(empty, (rank + distance) % size, tag)
        if fast.recv_ptr(&nothing, 0, (rank - distance + size) % size, tag, spins) < 0:
            recv_slow(empty, (rank - distance + size) % size, tag)
        distance <<= 1
    return 0


SMALL_OPS = {"SUM": OP_SUM, "PROD": OP_PROD, "MAX": OP_MAX, "MIN": OP_MIN,
             "LAND": OP_LAND, "BAND": OP_BAND, "LOR": OP_LOR, "BOR": OP_BOR,
             "LXOR": OP_LXOR, "BXOR": OP_BXOR, "MAXLOC": OP_MAXLOC, "MINLOC": OP_MINLOC}
# Predefined datatypes whose elements the C combine knows (LONG and
# UNSIGNED_LONG by their size: small_type_codes).
SMALL_TYPES = {"DOUBLE": T_F64, "FLOAT": T_F32, "INT64_T": T_I64, "LONG_LONG": T_I64,
               "INT32_T": T_I32, "INT": T_I32, "INT16_T": T_I16, "SHORT": T_I16,
               "INT8_T": T_I8, "SIGNED_CHAR": T_I8, "UINT64_T": T_U64,
               "UNSIGNED_LONG_LONG": T_U64, "UINT32_T": T_U32, "UNSIGNED": T_U32,
               "UINT16_T": T_U16, "UNSIGNED_SHORT": T_U16, "UINT8_T": T_U8,
               "UNSIGNED_CHAR": T_U8, "C_FLOAT_COMPLEX": T_C64, "C_COMPLEX": T_C64,
               "C_DOUBLE_COMPLEX": T_C128, "C_BOOL": T_BOOL}
# The pair datatypes of MAXLOC and MINLOC: name -> (C type, bytes of the value).
PAIR_TYPES = {"DOUBLE_INT": (T_DOUBLE_INT, sizeof(double)),
              "FLOAT_INT": (T_FLOAT_INT, sizeof(float)),
              "LONG_INT": (T_LONG_INT, sizeof(long)),
              "TWOINT": (T_2INT, sizeof(int)),
              "SHORT_INT": (T_SHORT_INT, sizeof(short))}


def small_type_codes(lib):
    """{datatype handle: C element type} of the library lib's datatypes
    that the C combine knows."""
    codes = {}
    for name, code in SMALL_TYPES.items():
        datatype = getattr(lib, name, None)
        if datatype is not None:
            codes[datatype.handle] = code
    codes[lib.LONG.handle] = T_I64 if lib.LONG.Get_size() == 8 else T_I32
    codes[lib.UNSIGNED_LONG.handle] = T_U64 if lib.UNSIGNED_LONG.Get_size() == 8 else T_U32
    # Half floats and long doubles have no name in mpi4py but their
    # numpy type characters.
    half = lib._typedict.get("e")
    if IVMPI_HAVE_FLOAT16 and half is not None and half.Get_extent() == (0, 2):
        codes[half.handle] = T_F16
    if lib.LONG_DOUBLE.Get_extent() == (0, sizeof(long double)):
        codes[lib.LONG_DOUBLE.handle] = T_LDOUBLE
    for name, (code, value) in PAIR_TYPES.items():
        datatype = getattr(lib, name, None)
        # Only a library that lays the pair out as the C struct the combine
        # reads (the value at 0, the index next, the struct's extent).
        if datatype is not None and datatype.Get_extent() == (0, _item_bytes(code)) \
                and datatype.Get_size() == value + sizeof(int):
            codes[datatype.handle] = code
    return codes


cpdef bint op_applies(int op, int typ) noexcept:
    """Does MPI define op on elements of C type typ?  (MAX/MIN not on
    complex numbers, the logical ops on integers and C_BOOL, the bitwise
    ones on integers, MAXLOC/MINLOC on the pairs and nothing else on
    them.)  Anything else is the general path's to report."""
    cdef bint integer = T_I64 == typ or T_I32 == typ or (T_I16 <= typ <= T_U8)
    cdef bint pair = T_DOUBLE_INT <= typ <= T_SHORT_INT
    if op == OP_MAXLOC or op == OP_MINLOC:
        return pair
    if pair:
        return False
    if op == OP_SUM or op == OP_PROD:
        return typ != T_BOOL and typ != 0
    if op == OP_MAX or op == OP_MIN:
        return integer or typ == T_F64 or typ == T_F32 or typ == T_F16 or typ == T_LDOUBLE
    if op == OP_LAND or op == OP_LOR or op == OP_LXOR:
        return integer or typ == T_BOOL
    if op == OP_BAND or op == OP_BOR or op == OP_BXOR:
        return integer
    return False


cdef struct Span:
    # A plain buffer spec, opened: its bytes, how many of them its count
    # names (-1: the whole buffer), the C element type (0: none the combine
    # knows) and, when it came through the buffer protocol, the export to
    # release.
    char *data
    Py_ssize_t length
    Py_ssize_t nbytes
    int typ
    size_t key          # its datatype's handle: reductions need equal datatypes
    bint pinned
    Py_buffer view


cdef inline void _close(Span *s) noexcept:
    if s.pinned:
        s.pinned = False
        PyBuffer_Release(&s.view)


cdef char _format_char(const char *fmt) noexcept:
    """The number format of a native buffer format ('d', 'l', ...; complex
    numbers 'F' and 'D', as numpy names them), or 0."""
    cdef char c
    if fmt == NULL:
        return b'B'
    if fmt[0] == b'@' or fmt[0] == b'=' or fmt[0] == b'<':
        fmt += 1
    c = fmt[0]
    if c == b'Z':
        c = b'F' if fmt[1] == b'f' else b'D' if fmt[1] == b'd' else 0
        if c and fmt[2] != 0:
            c = 0
    return c


cdef char _numpy_char(cnp.ndarray arr) noexcept:
    """The format character of a numpy array's dtype, for the types the C
    combine knows, or 0."""
    cdef int num = cnp.PyArray_TYPE(arr)
    if not cnp.PyArray_ISNOTSWAPPED(arr):
        return 0
    if num == cnp.NPY_DOUBLE:
        return b'd'
    if num == cnp.NPY_FLOAT:
        return b'f'
    if num == cnp.NPY_LONG:
        return b'l'
    if num == cnp.NPY_LONGLONG:
        return b'q'
    if num == cnp.NPY_INT:
        return b'i'
    if num == cnp.NPY_SHORT:
        return b'h'
    if num == cnp.NPY_BYTE:
        return b'b'
    if num == cnp.NPY_ULONG:
        return b'L'
    if num == cnp.NPY_ULONGLONG:
        return b'Q'
    if num == cnp.NPY_UINT:
        return b'I'
    if num == cnp.NPY_USHORT:
        return b'H'
    if num == cnp.NPY_UBYTE:
        return b'B'
    if num == cnp.NPY_CFLOAT:
        return b'F'
    if num == cnp.NPY_CDOUBLE:
        return b'D'
    if num == cnp.NPY_BOOL:
        return b'?'
    if num == cnp.NPY_FLOAT16:
        return b'e'
    if num == cnp.NPY_LONGDOUBLE:
        return b'g'
    return 0


cdef extern from "numpy/arrayobject.h":
    bint PyDataType_REFCHK(cnp.PyArray_Descr *) nogil


cdef bint _direct_records(object obj, bint writable, char **data,
                          Py_ssize_t *length) noexcept:
    """_direct for a numpy array of records, the usual buffer of the
    MAXLOC/MINLOC pairs (its format is none _direct takes): contiguous and
    holding no Python objects, whose pointers must not cross to another
    process.  (The datatype says what the bytes are, as to the library.)"""
    cdef cnp.ndarray arr
    if type(obj) is not cnp.ndarray:
        return False
    arr = <cnp.ndarray>obj
    if cnp.PyArray_TYPE(arr) != cnp.NPY_VOID or PyDataType_REFCHK(cnp.PyArray_DESCR(arr)) \
            or not (cnp.PyArray_IS_C_CONTIGUOUS(arr) or cnp.PyArray_IS_F_CONTIGUOUS(arr)) \
            or (writable and not cnp.PyArray_ISWRITEABLE(arr)):
        return False
    data[0] = <char *>cnp.PyArray_DATA(arr)
    length[0] = cnp.PyArray_NBYTES(arr)
    return True


cdef inline Py_ssize_t _item_bytes(int typ) noexcept nogil:
    # (A pair's bytes are its struct's extent, padding included, as MPI's.)
    if typ == T_DOUBLE_INT:
        return sizeof(ivmpi_double_int)
    if typ == T_FLOAT_INT:
        return sizeof(ivmpi_float_int)
    if typ == T_LONG_INT:
        return sizeof(ivmpi_long_int)
    if typ == T_2INT:
        return sizeof(ivmpi_2int)
    if typ == T_SHORT_INT:
        return sizeof(ivmpi_short_int)
    if typ == T_F64 or typ == T_I64 or typ == T_U64 or typ == T_C64:
        return 8
    if typ == T_C128:
        return 16
    if typ == T_LDOUBLE:
        return sizeof(long double)
    if typ == T_I16 or typ == T_U16 or typ == T_F16:
        return 2
    if typ == T_I8 or typ == T_U8 or typ == T_BOOL:
        return 1
    return 4


cdef class SmallCollectives:
    """A communicator's blocking collectives as one Cython call each.

    Built over the hidden twin's FastPath.  Each call takes the cases its
    method describes (plain buffers of any kind with the buffer protocol,
    bare or as [buf, datatype] / [buf, count, datatype] / vector specs with
    a predefined datatype; every block of one step within the eager limit;
    the predefined ops on the C number types, op_applies) and hands anything else to
    the same method of `general`, the communicator's ivmpi.collectives
    object, whose algorithm it mirrors step for step (same partners, tags
    and operand order, so ranks may mix the two paths; `general` also
    reports every error).  `tags` maps each collective's name to its tag.
    """
    cdef FastPath fast
    cdef long rank, size
    cdef long barrier_tag, allreduce_tag, bcast_tag, reduce_tag
    cdef long allgather_tag, alltoall_tag, gather_tag, scatter_tag
    cdef long scan_tag, exscan_tag, reduce_scatter_tag
    cdef uint64_t eager_limit
    cdef dict opcodes, typecodes
    cdef size_t format_key[128]     # format character -> handle of its datatype
    cdef object send_slow, recv_slow, general, in_place, default_op
    cdef public object lock_of      # name -> mpi4py's lock of an object collective
    # Large blocks of the caller's own that a peer copies from our memory
    # go in one copy (_give); not with more ranks than cores, where the
    # peer's copy waits for it to be scheduled (the sender would too).
    cdef public bint give_copies
    cdef object last_op, last_code
    cdef object op_type, last_user_op   # the library's Op class; the last user op met
    cdef size_t last_user_handle
    cdef bint last_user_commutes
    cdef bytearray acc, tmp, part
    cdef Py_ssize_t *soff
    cdef Py_ssize_t *slen
    cdef Py_ssize_t *roff
    cdef Py_ssize_t *rlen

    def __cinit__(self, FastPath fast, long rank, long size, dict tags, dict opcodes,
                  send_slow, recv_slow, general, in_place, default_op):
        self.fast = fast
        self.rank = rank
        self.size = size
        self.barrier_tag = tags["Barrier"]
        self.allreduce_tag = tags["Allreduce"]
        self.bcast_tag = tags["Bcast"]
        self.reduce_tag = tags["Reduce"]
        self.allgather_tag = tags["Allgather"]
        self.alltoall_tag = tags["Alltoall"]
        self.gather_tag = tags["Gather"]
        self.scatter_tag = tags["Scatter"]
        self.scan_tag = tags["Scan"]
        self.exscan_tag = tags["Exscan"]
        self.reduce_scatter_tag = tags["Reduce_scatter"]
        self.eager_limit = fast.eager_limit
        self.opcodes = opcodes
        self.send_slow = send_slow
        self.recv_slow = recv_slow
        self.general = general
        self.in_place = in_place
        self.default_op = default_op
        self.lock_of = None
        self.acc = bytearray(0)
        self.tmp = bytearray(0)
        self.part = bytearray(0)
        from ivmpi.lib import MPI as lib
        self.typecodes = small_type_codes(lib)
        self.op_type = lib.Op
        # The datatype mpi4py reads from a buffer's format, for the formats
        # the C combine knows.
        memset(self.format_key, 0, sizeof(self.format_key))
        for c, datatype in ((b'd', lib.DOUBLE), (b'f', lib.FLOAT), (b'l', lib.LONG),
                            (b'q', lib.LONG_LONG), (b'i', lib.INT), (b'h', lib.SHORT),
                            (b'b', lib.SIGNED_CHAR), (b'L', lib.UNSIGNED_LONG),
                            (b'Q', lib.UNSIGNED_LONG_LONG), (b'I', lib.UNSIGNED),
                            (b'H', lib.UNSIGNED_SHORT), (b'B', lib.UNSIGNED_CHAR),
                            (b'F', lib.C_FLOAT_COMPLEX), (b'D', lib.C_DOUBLE_COMPLEX),
                            (b'?', lib.C_BOOL), (b'g', lib.LONG_DOUBLE),
                            (b'e', lib._typedict.get('e', lib.DATATYPE_NULL))):
            self.format_key[c[0]] = <size_t>datatype.handle
        self.soff = <Py_ssize_t *>malloc(4 * max(size, 1) * sizeof(Py_ssize_t))
        if self.soff == NULL:
            raise MemoryError()
        self.slen = self.soff + size
        self.roff = self.slen + size
        self.rlen = self.roff + size

    def __dealloc__(self):
        free(self.soff)

    # --- helpers ---------------------------------------------------------

    cdef bint _open(self, object spec, bint writable, Span *s) except -1:
        """Open a plain buffer spec into s; False (nothing to close) when it
        is something else: the general path takes it."""
        cdef object buf = spec, datatype = None, entry, count = None, displ = None
        cdef Py_ssize_t n = 0, skip = 0
        s.pinned = False
        s.nbytes = -1
        s.typ = 0
        s.key = 0
        if spec is self.in_place:
            return False
        if not PyObject_CheckBuffer(spec) and type(spec) is not list \
                and type(spec) is not tuple:
            buf = _foreign(spec)
            if buf is None:
                return False
        elif not PyObject_CheckBuffer(spec):
            # mpi4py's forms: [buf, datatype], [buf, count, datatype],
            # [buf, (count, displ), datatype], [buf, count, displ, datatype].
            n = len(spec)
            if n == 2:
                buf, datatype = spec[0], spec[1]
            elif n == 3:
                buf, count, datatype = spec[0], spec[1], spec[2]
                if type(count) is tuple or type(count) is list:
                    if len(count) != 2:
                        return False
                    count, displ = count[0], count[1]
            elif n == 4:
                buf, count, displ, datatype = spec[0], spec[1], spec[2], spec[3]
            else:
                return False
            # Out of range (or past any buffer): the general path reports it.
            # (Below 2**48 of a predefined type, at most 32 bytes, the byte
            # counts cannot overflow.)
            if count is not None and (type(count) is not int or count < 0 or count > (1 << 48)):
                return False
            if displ is not None and (type(displ) is not int or displ < 0 or displ > (1 << 48)):
                return False
            if type(datatype) is str:
                datatype = _typechar_datatype(datatype)
            entry = self.fast._extent_of(datatype)
            if entry is None:
                return False
            buf = _as_buffer(buf)
            if buf is None:
                return False
            if count is not None:
                s.nbytes = <Py_ssize_t>count * <Py_ssize_t>entry
            if displ is not None:
                skip = <Py_ssize_t>displ * <Py_ssize_t>entry
            s.key = <size_t>datatype.handle
            s.typ = self.typecodes.get(datatype.handle, 0)
        if _direct(buf, writable, &s.data, &s.length):
            if datatype is None and type(buf) is cnp.ndarray:
                self._format_type(s, _numpy_char(<cnp.ndarray>buf),
                                  cnp.PyArray_ITEMSIZE(<cnp.ndarray>buf))
        elif T_DOUBLE_INT <= s.typ <= T_SHORT_INT \
                and _direct_records(buf, writable, &s.data, &s.length):
            pass
        else:
            if not _pin(buf, writable, &s.view):
                return False
            s.pinned = True
            s.data = <char *>s.view.buf
            s.length = s.view.len
            if datatype is None:
                self._format_type(s, _format_char(s.view.format), s.view.itemsize)
        if skip:
            # A displacement: the span starts there (past the buffer: the
            # general path reports it).
            if skip > s.length:
                _close(s)
                return False
            s.data += skip
            s.length -= skip
        return True

    cdef int _format_type(self, Span *s, char c, Py_ssize_t itemsize) except -1:
        # A bare buffer's datatype is the one mpi4py reads from its format.
        s.typ = 0
        s.key = self.format_key[c] if 0 < c < 128 else 0
        if s.key:
            s.typ = self.typecodes.get(s.key, 0)
            if s.typ and itemsize != _item_bytes(s.typ):
                s.typ = 0
                s.key = 0
        return 0

    cdef bint _open_v(self, object spec, bint writable, Span *s, Py_ssize_t *off,
                      Py_ssize_t *length) except -1:
        """Open a vector spec [buf, counts, displs, datatype] (or mpi4py's
        other spellings of one: [buf, counts], [buf, (counts, displs)] with
        the buffer's own datatype) with a predefined datatype and lists of
        counts and displacements into s and the byte offset and length of
        each rank's block; False (nothing to close) for anything else."""
        cdef object buf, counts, displs = None, datatype = None, entry
        cdef Py_ssize_t i, n, extent, c, d, running = 0
        cdef long size = self.size
        cdef bint opened = False
        if type(spec) is not list and type(spec) is not tuple:
            return False
        n = len(spec)
        if n == 4:
            buf, counts, displs, datatype = spec[0], spec[1], spec[2], spec[3]
        elif n == 3:
            buf, counts, datatype = spec[0], spec[1], spec[2]
            if type(counts) is tuple:
                if len(counts) != 2:
                    return False
                counts, displs = counts[0], counts[1]
        elif n == 2:
            buf, counts = spec[0], spec[1]
            if type(counts) is tuple:
                if len(counts) != 2:
                    return False
                counts, displs = counts[0], counts[1]
            elif type(counts) is not list and type(counts) is not cnp.ndarray:
                return False        # [buf, datatype], [buf, count]: the general path's
        else:
            return False
        if type(datatype) is str:
            datatype = _typechar_datatype(datatype)
        # Counts and displacements in numpy arrays (of integers: anything
        # else stays for the general path to report).
        if type(counts) is cnp.ndarray and cnp.PyArray_ISINTEGER(<cnp.ndarray>counts):
            counts = counts.tolist()
        if type(displs) is cnp.ndarray and cnp.PyArray_ISINTEGER(<cnp.ndarray>displs):
            displs = displs.tolist()
        if (type(counts) is not list and type(counts) is not tuple) or len(counts) != size:
            return False
        if displs is not None and ((type(displs) is not list and type(displs) is not tuple)
                                   or len(displs) != size):
            return False
        if datatype is None:
            # The datatype mpi4py reads from the buffer's format.
            if type(buf) is list or type(buf) is tuple or not self._open(buf, writable, s):
                return False
            opened = True
            if s.typ == 0:
                _close(s)
                return False
            extent = _item_bytes(s.typ)
        else:
            entry = self.fast._extent_of(datatype)
            if entry is None:
                return False
            extent = <Py_ssize_t>entry
        for i in range(size):
            c = counts[i] if type(counts[i]) is int else -1
            d = (displs[i] if type(displs[i]) is int else -1) if displs is not None else running
            if c < 0 or d < 0 or c > (1 << 40) or d > (1 << 40):
                if opened:
                    _close(s)
                return False
            running = d + c
            off[i] = d * extent
            length[i] = c * extent
        if not opened:
            if not self._open(buf, writable, s):
                return False
            s.key = <size_t>datatype.handle
            s.typ = self.typecodes.get(datatype.handle, 0)
        for i in range(size):
            if length[i] and off[i] + length[i] > s.length:
                _close(s)
                return False
        return True

    cdef inline int _send(self, const char *data, Py_ssize_t n, long dest, long tag) except -1:
        """One eager message; the twin's own Send when the fast path cannot."""
        if not self.fast.send_ptr(data, n, dest, tag):
            self.send_slow(PyMemoryView_FromMemory(<char *>data, n, PyBUF_READ), dest, tag)
        return 0

    cdef int _give(self, const char *data, Py_ssize_t n, long dest, long tag,
                   list announced=None) except -1:
        """A send its receiver only receives for: a block that dest copies
        from our memory is announced and waited for (one copy, from the
        caller's buffer, instead of the ring's two: the ring's copies cross
        between cores twice, which on some hosts costs several times the
        copy), the rest sent eagerly.  announced: a list that takes the
        announced send instead, for the caller to finish later."""
        op = self.fast.announce_step(data, n, dest, tag) if self.give_copies else None
        if op is None:
            self._send(data, n, dest, tag)
        elif announced is not None:
            announced.append(op)
        else:
            self.fast.finish(op, "a collective's step")
        return 0

    cdef int _exchange(self, const char *out, Py_ssize_t nout, long dest, char *into,
                       Py_ssize_t nin, long source, long tag) except -1:
        """A step that sends to dest, then receives from source: a large
        block to a peer that copies from our memory is announced, received
        for, then waited for (one copy instead of the ring's two); the
        rest is sent eagerly."""
        op = self.fast.announce_step(out, nout, dest, tag)
        if op is None:
            self._send(out, nout, dest, tag)
            self._recv(into, nin, source, tag)
            return 0
        try:
            self._recv(into, nin, source, tag)
        finally:
            self.fast.finish(op, "a collective's step")
        return 0

    cdef inline int _recv(self, char *data, Py_ssize_t n, long source, long tag) except -1:
        if self.fast.recv_ptr(data, n, source, tag, self.fast.spins) < 0:
            self.recv_slow(PyMemoryView_FromMemory(data, n, PyBUF_WRITE), source, tag)
        return 0

    cdef inline bint _small(self, Py_ssize_t n) noexcept:
        return <uint64_t>n <= self.eager_limit

    cdef object _op_code(self, object op):
        """The C code of a predefined op this class combines, or None.  The
        same op object comes back call after call: remember it."""
        if op is self.last_op:
            return self.last_code
        code = self.opcodes.get(getattr(op, "handle", None))
        if code is not None:
            self.last_op, self.last_code = op, code
        return code

    cdef size_t _user_op(self, object op, bint *commutes) except? 0:
        """The library handle of a user-defined op (Op.Create, not freed),
        and whether it commutes; 0 for anything else.  The same op object
        comes back call after call: remembered with its handle (freed, an
        op's handle becomes OP_NULL's)."""
        cdef size_t handle
        if not isinstance(op, self.op_type):
            return 0
        handle = <size_t>op.handle
        if op is self.last_user_op and handle == self.last_user_handle:
            commutes[0] = self.last_user_commutes
            return handle
        if op.is_predefined:        # (OP_NULL too)
            return 0
        self.last_user_op, self.last_user_handle = op, handle
        self.last_user_commutes = op.is_commutative
        commutes[0] = self.last_user_commutes
        return handle

    cdef char *_scratch(self, int which, Py_ssize_t n) except NULL:
        """One of three private scratch buffers, at least n bytes."""
        if which == 0:
            if len(self.acc) < n:
                self.acc = bytearray(n)
            return PyByteArray_AS_STRING(self.acc)
        if which == 1:
            if len(self.tmp) < n:
                self.tmp = bytearray(n)
            return PyByteArray_AS_STRING(self.tmp)
        if len(self.part) < n:
            self.part = bytearray(n)
        return PyByteArray_AS_STRING(self.part)

    cdef int _reduction(self, object sendbuf, object recvbuf, object op, Span *send,
                        Span *recv, bint need_recv, bint user=False) except -1:
        """Open the buffers of a reduction: 1 when the fast path takes it
        (send is then recv's data when IN_PLACE), else 0 with nothing open.
        Same element type and byte count on both sides, as MPI asks.  user:
        op is a user-defined op (_user_op), which takes any element type
        the fast path knows."""
        cdef Py_ssize_t n
        code = 0 if user else self._op_code(op)
        if code is None:
            return 0
        if need_recv:
            if not self._open(recvbuf, True, recv):
                return 0
            n = recv.nbytes if recv.nbytes >= 0 else recv.length
            if n > recv.length or not (recv.typ != 0 if user else op_applies(code, recv.typ)) \
                    or n % _item_bytes(recv.typ):
                _close(recv)
                return 0
            recv.nbytes = n
            if sendbuf is self.in_place:
                send.data, send.length, send.nbytes, send.typ = recv.data, n, n, recv.typ
                send.key = recv.key
                send.pinned = False
                return 1
        if not self._open(sendbuf, False, send):
            if need_recv:
                _close(recv)
            return 0
        n = send.nbytes if send.nbytes >= 0 else send.length
        send.nbytes = n
        if n > send.length or not (send.typ != 0 if user else op_applies(code, send.typ)) \
                or n % _item_bytes(send.typ) \
                or (need_recv and (send.key != recv.key or n != recv.nbytes)):
            _close(send)
            if need_recv:
                _close(recv)
            return 0
        return 1

    # --- barrier and broadcast ---------------------------------------------

    def Barrier(self):
        small_barrier(self.fast, self.rank, self.size, self.barrier_tag, self.fast.spins,
                      self.send_slow, self.recv_slow)

    def barrier(self):
        small_barrier(self.fast, self.rank, self.size, self.barrier_tag, self.fast.spins,
                      self.send_slow, self.recv_slow)

    def Bcast(self, buf, root=0):
        if not self._try_bcast(buf, root):
            self.general.Bcast(buf, root)

    cdef bint _try_bcast(self, object buf, object root) except -1:
        """A broadcast of a plain buffer up to the eager limit: the general
        algorithm's binomial tree (same tag, same parents and children, so
        ranks may mix the two paths), each step one fast send or receive."""
        cdef Span s
        cdef Py_ssize_t nbytes
        cdef long r, vrank, mask, peer, size = self.size
        if type(root) is not int or size < 2:
            return False
        r = root
        if r < 0 or r >= size:
            return False
        if not self._open(buf, self.rank != r, &s):
            return False
        try:
            nbytes = s.nbytes if s.nbytes >= 0 else s.length
            if nbytes > s.length or not self._small(nbytes):
                return False
            vrank = (self.rank - r + size) % size
            mask = 1
            while mask < size:
                if vrank & mask:
                    self._recv(s.data, nbytes, (vrank - mask + r) % size, self.bcast_tag)
                    break
                mask <<= 1
            mask >>= 1
            announced = None
            while mask > 0:
                if vrank + mask < size:
                    peer = (vrank + mask + r) % size
                    # A large block to a child that copies from our memory:
                    # announced to every child first, waited for at the end.
                    op = self.fast.announce_step(s.data, nbytes, peer, self.bcast_tag)
                    if op is None:
                        self._send(s.data, nbytes, peer, self.bcast_tag)
                    elif announced is None:
                        announced = [op]
                    else:
                        announced.append(op)
                mask >>= 1
            if announced is not None:
                for op in announced:
                    self.fast.finish(op, "Bcast")
            return True
        finally:
            _close(&s)

    def bcast(self, obj, root=0):
        """The general algorithm's binomial tree of the root's pickle, passed
        on as bytes: each receive one call of the fast path, the sends to
        the children as _send_all's (a large pickle staged once in this
        rank's heap, on three ranks or more, and announced to each child,
        which copies it out at once: no rendezvous with one child after
        another)."""
        cdef long r, vrank, mask, size = self.size
        cdef list children
        if self.lock_of is None:
            return self.general.bcast(obj, root)
        if type(root) is not int or size < 2 or not 0 <= root < size:
            with self.lock_of("bcast"):     # mpi4py's lock, whichever path runs
                return self.general.bcast(obj, root)
        with self.lock_of("bcast"):
            r = root
            vrank = (self.rank - r + size) % size
            data = self.fast.dumps(obj) if vrank == 0 else None
            mask = 1
            while mask < size:
                if vrank & mask:
                    data = self._recv_pickle((vrank - mask + r) % size, self.bcast_tag, "bcast")
                    break
                mask <<= 1
            mask >>= 1
            children = []
            while mask > 0:
                if vrank + mask < size:
                    children.append((vrank + mask + r) % size)
                mask >>= 1
            if children:
                self._wait_all(self._send_all([data] * len(children), children,
                                              self.bcast_tag, "bcast"))
            return self.fast.loads(data)

    # --- gather, scatter, allgather, alltoall of objects -----------------------
    # The general algorithms' messages (ivmpi.collectives), each step one
    # call of the fast path: an eager pickle published straight into the
    # ring, an eager message unpickled straight from it.  A send the fast
    # path cannot take (a large pickle, a full ring) and the ones after it
    # go by the general object's _send_pickles; a receive it cannot take,
    # by the twin's own recv.

    cdef object _recv_obj(self, long source, long tag):
        cdef FastPath fast = self.fast
        data = fast.recv_bytes(source, tag, fast.spins)
        if data is None:
            return fast.general_recv(None, source, tag, None)
        return fast.loads(data) if len(data) else None

    cdef object _recv_pickle(self, long source, long tag, str what):
        """The pickle from source with tag as bytes (to pass on as it is):
        straight from the ring (eager, region or streamed rendezvous), else
        the general object's."""
        cdef FastPath fast = self.fast
        cdef RecvOp op
        fast.rts_frames = True
        try:
            data = fast.recv_bytes(source, tag, fast.spins)
        finally:
            fast.rts_frames = False
        if data is None:
            return self.general._recv_pickle(source, tag, what)
        if fast.pending_recv is not None:
            op, fast.pending_recv = fast.pending_recv, None
            fast.wait_op(op, what)
        return data

    cdef list _send_all(self, list datas, list dests, long tag, str what):
        """Send datas[i] to dests[i] in order; the requests still to wait for."""
        cdef Py_ssize_t i, n = len(dests)
        for i in range(n):
            if not self.fast.send(datas[i], dests[i], tag):
                return self.general._send_pickles(datas[i:], dests[i:], [tag] * (n - i), what)
        return None

    cdef object _wait_all(self, list requests):
        if requests:
            for request in requests:
                request.Wait()

    def gather(self, sendobj, root=0):
        cdef long r, i, size = self.size
        if self.lock_of is None:
            return self.general.gather(sendobj, root)
        with self.lock_of("gather"):
            if type(root) is not int or not 0 <= root < size:
                return self.general.gather(sendobj, root)
            r = root
            if self.rank != r:
                data = self.fast.dumps(sendobj)
                self._wait_all(self._send_all([data], [r], self.gather_tag, "gather"))
                return None
            result = [None] * size
            for i in range(size):
                if i == r:
                    result[i] = self.fast.loads(self.fast.dumps(sendobj))
                else:
                    result[i] = self._recv_obj(i, self.gather_tag)
            return result

    def scatter(self, sendobj, root=0):
        cdef long r, i, size = self.size
        if self.lock_of is None:
            return self.general.scatter(sendobj, root)
        with self.lock_of("scatter"):
            if type(root) is not int or not 0 <= root < size:
                return self.general.scatter(sendobj, root)
            r = root
            if self.rank != r:
                return self._recv_obj(r, self.scatter_tag)
            items = [None] * size if sendobj is None else list(sendobj)
            if len(items) != size:
                raise ValueError(f"expecting {size} items, got {len(items)}")
            dumps = self.fast.dumps
            dests = [i for i in range(size) if i != r]
            requests = self._send_all([dumps(items[i]) for i in dests], dests,
                                      self.scatter_tag, "scatter")
            mine = self.fast.loads(dumps(items[r]))
            self._wait_all(requests)
            return mine

    def allgather(self, sendobj):
        cdef long step, size = self.size, rank = self.rank
        if self.lock_of is None:
            return self.general.allgather(sendobj)
        with self.lock_of("allgather"):
            data = self.fast.dumps(sendobj)
            requests = self._send_all([data] * (size - 1),
                                      [(rank + step) % size for step in range(1, size)],
                                      self.allgather_tag, "allgather")
            result = [None] * size
            for step in range(1, size):
                source = (rank - step + size) % size
                result[source] = self._recv_obj(source, self.allgather_tag)
            result[rank] = self.fast.loads(data)
            self._wait_all(requests)
            return result

    def alltoall(self, sendobj):
        cdef long step, size = self.size, rank = self.rank
        if self.lock_of is None:
            return self.general.alltoall(sendobj)
        with self.lock_of("alltoall"):
            items = [None] * size if sendobj is None else list(sendobj)
            if len(items) != size:
                raise ValueError(f"expecting {size} items, got {len(items)}")
            dumps = self.fast.dumps
            dests = [(rank + step) % size for step in range(1, size)]
            datas = []
            last = data = None
            for dest in dests:
                item = items[dest]
                if item is not last or data is None:    # an object repeated: pickled once
                    last, data = item, dumps(item)
                datas.append(data)
            requests = self._send_all(datas, dests, self.alltoall_tag, "alltoall")
            result = [None] * size
            for step in range(1, size):
                source = (rank - step + size) % size
                result[source] = self._recv_obj(source, self.alltoall_tag)
            result[rank] = self.fast.loads(dumps(items[rank]))
            self._wait_all(requests)
            return result

    # --- reductions ------------------------------------------------------------

    cdef int _tree_reduce(self, const char *data, char *out, Py_ssize_t nbytes, int code,
                          int typ, long root, long tag) except -1:
        """The general algorithm's binomial reduce of data around root (the
        ops here are commutative): the result goes to out at root (out may
        be data: IN_PLACE; NULL elsewhere).  Each message received is
        combined straight out of the ring (acc = mine op theirs, the lower
        rank's operand first, as the general algorithm), and a rank with
        nothing to receive sends its input as it is: no private copies."""
        cdef long vrank, mask, size = self.size
        cdef const char *mine = data
        cdef char *acc = out
        vrank = (self.rank - root + size) % size
        mask = 1
        while mask < size:
            if vrank & mask:
                self._send(mine, nbytes, (vrank - mask + root) % size, tag)
                break
            if vrank + mask < size:
                if acc == NULL:
                    acc = self._scratch(0, nbytes)
                stream_take(self, NULL, acc, mine, nbytes, (vrank + mask + root) % size, tag,
                            code, typ, True)
                mine = acc
            mask <<= 1
        if out != NULL and mine != out:
            ivmpi_copy_plain(out, mine, nbytes)
        return 0

    cdef bint _pair_reduce(self, const char *data, char *out, Py_ssize_t nbytes, int code,
                           int typ, long root, long tag) except -1:
        """Reduce (root 0 or 1) or allreduce (root -1) on two ranks that
        copy each other's messages (pair_copies): the whole input goes
        to the other rank (to the root only, for a reduce) in one message,
        announced from the caller's buffer, and each result is lower op
        higher, as Collectives._pair_reduce.  One copy of each input
        instead of the ring's two, which cross between cores: on some
        hosts several times one copy.  out: the result (may be data:
        IN_PLACE), NULL off the root.  False: nothing sent, the general
        path's turn (a large message that cannot be announced)."""
        cdef long rank = self.rank, peer = 1 - self.rank
        cdef char *theirs
        cdef Py_ssize_t count = nbytes // _item_bytes(typ)
        op = None
        if root < 0 or rank != root:        # ours goes to the other rank
            op = self.fast.announce_step(data, nbytes, peer, tag)
            if op is None:
                if not self._small(nbytes):
                    return False
                self._send(data, nbytes, peer, tag)
        try:
            if root >= 0 and rank != root:
                return True
            # Theirs straight into the result when it is not our input: the
            # combine then works in place, on two buffers instead of three.
            theirs = out if out + nbytes <= data or data + nbytes <= out \
                else self._scratch(1, nbytes)
            self._recv(theirs, nbytes, peer, tag)
        finally:
            if op is not None:
                self.fast.finish(op, "a collective's step")
        # (The peer has copied ours by now: out may be data, IN_PLACE; the
        # loops take out as one of their operands.)
        with nogil:
            if rank == 0:
                _combine3(code, typ, out, data, theirs, count)
            else:
                _combine3(code, typ, out, theirs, data, count)
        return True

    cdef int _streamed_reduce(self, const char *data, char *out, Py_ssize_t nbytes, int code,
                              int typ, long root, long tag) except -1:
        """The general algorithm for large messages (Collectives._region_reduce):
        a reduce-scatter streamed through the rings (each rank reduces its
        block of every input straight out of the ring, in rank order), then
        every block to the root in eager segments.  out: the result at root
        (may be data: IN_PLACE), NULL elsewhere."""
        cdef long size = self.size, rank = self.rank, j
        cdef Py_ssize_t item = _item_bytes(typ), count = nbytes // item, o, m, seg, mine
        cdef Py_ssize_t eager = <Py_ssize_t>self.eager_limit
        cdef char *target
        for j in range(size):
            self.soff[j] = j * count // size * item
            self.slen[j] = (j + 1) * count // size * item - self.soff[j]
        mine = self.slen[rank]
        if out != NULL and (out + nbytes <= data or data + nbytes <= out):
            target = out + self.soff[rank]
        else:
            target = self._scratch(0, mine)     # the input is still read meanwhile
        reduce_scatter_stream(self, data, target, self.soff, self.slen, item, code, typ, tag)
        if out == NULL:
            seg = stream_segment(mine, item, eager)
            o = 0
            while o < mine:
                m = min(seg, mine - o)
                stream_give(self, target + o, m, root, tag)
                o += m
            return 0
        if target != out + self.soff[rank]:
            ivmpi_copy_plain(out + self.soff[rank], target, mine)
        for j in range(size):
            if j == rank:
                continue
            seg = stream_segment(self.slen[j], item, eager)
            o = 0
            while o < self.slen[j]:
                m = min(seg, self.slen[j] - o)
                self._recv(out + self.soff[j] + o, m, j, tag)
                o += m
        return 0

    cdef int _streamed_allreduce(self, const char *data, char *out, Py_ssize_t nbytes,
                                 int code, int typ, long tag) except -1:
        """The general algorithm for large messages (Collectives._region_allreduce):
        the reduce-scatter of _streamed_reduce, then every rank's result
        block to every other rank in the same eager segments, segment k to
        all before segment k from all (no rendezvous, no private copy of
        a whole message).  out may be data (IN_PLACE)."""
        cdef long size = self.size, rank = self.rank, j, step
        cdef Py_ssize_t item = _item_bytes(typ), count = nbytes // item, o, m, seg, mine
        cdef Py_ssize_t k, rounds = 0
        cdef Py_ssize_t eager = <Py_ssize_t>self.eager_limit
        cdef char *target
        for j in range(size):
            self.soff[j] = j * count // size * item
            self.slen[j] = (j + 1) * count // size * item - self.soff[j]
            seg = stream_segment(self.slen[j], item, eager)
            self.rlen[j] = seg
            if (self.slen[j] + seg - 1) // seg > rounds:
                rounds = (self.slen[j] + seg - 1) // seg
        mine = self.slen[rank]
        if out + nbytes <= data or data + nbytes <= out:
            target = out + self.soff[rank]
        else:
            target = self._scratch(0, mine)     # the input is still read meanwhile
        reduce_scatter_stream(self, data, target, self.soff, self.slen, item, code, typ, tag)
        if target != out + self.soff[rank]:
            ivmpi_copy_plain(out + self.soff[rank], target, mine)
        target = out + self.soff[rank]
        for k in range(rounds):
            o = k * self.rlen[rank]
            if o < mine:
                m = min(self.rlen[rank], mine - o)
                for step in range(1, size):
                    stream_give(self, target + o, m, (rank + step) % size, tag)
            for step in range(1, size):
                j = (rank - step + size) % size
                o = k * self.rlen[j]
                if o < self.slen[j]:
                    self._recv(out + self.soff[j] + o, min(self.rlen[j], self.slen[j] - o),
                               j, tag)
        return 0

    def Reduce(self, sendbuf, recvbuf, op=None, root=0):
        if op is None:
            op = self.default_op
        if not self._try_reduce(sendbuf, recvbuf, op, root):
            self.general.Reduce(sendbuf, recvbuf, op, root)

    cdef bint _try_reduce(self, object sendbuf, object recvbuf, object op, object root) except -1:
        cdef Span send, recv
        cdef long r
        cdef bint at_root, commutes
        cdef size_t user = 0
        if type(root) is not int or self.size < 2:
            return False
        r = root
        if r < 0 or r >= self.size:
            return False
        at_root = self.rank == r
        if self._op_code(op) is None:
            user = self._user_op(op, &commutes)
            if user == 0:
                return False
        if not self._reduction(sendbuf, recvbuf, op, &send, &recv, at_root, user != 0):
            return False
        try:
            if user:
                if not self._small(send.nbytes):
                    return False
                self._user_reduce(send.data, recv.data if at_root else NULL, send.nbytes,
                                  send.nbytes // _item_bytes(send.typ), send.key, user,
                                  commutes, r, self.reduce_tag)
                return True
            if (self.give_copies or not self._small(send.nbytes)) \
                    and pair_copies(self.size, self.rank, self.fast.world_ranks):
                # (The tree's one message on two ranks, from the caller's
                # buffer: the general path's messages at every size.)
                return self._pair_reduce(send.data, recv.data if at_root else NULL,
                                         send.nbytes, <int>self._op_code(op), send.typ, r,
                                         self.reduce_tag)
            if self._small(send.nbytes):
                self._tree_reduce(send.data, recv.data if at_root else NULL, send.nbytes,
                                  <int>self._op_code(op), send.typ, r, self.reduce_tag)
                return True
            if send.nbytes >= _REDUCE_SCATTER_MIN \
                    and send.nbytes // _item_bytes(send.typ) >= self.size:
                self._streamed_reduce(send.data, recv.data if at_root else NULL, send.nbytes,
                                      <int>self._op_code(op), send.typ, r, self.reduce_tag)
                return True
            return False
        finally:
            _close(&send)
            if at_root:
                _close(&recv)

    def Allreduce(self, sendbuf, recvbuf, op=None):
        if op is None:
            op = self.default_op
        if not self._try_allreduce(sendbuf, recvbuf, op):
            self.general.Allreduce(sendbuf, recvbuf, op)

    cdef bint _try_allreduce(self, object sendbuf, object recvbuf, object op) except -1:
        """The general algorithm: ranks past the largest power of two fold
        into their even neighbours, recursive doubling, the result back."""
        cdef Span send, recv
        cdef long size = self.size, rank = self.rank, pof2 = 1, extra, newrank, mask
        cdef long newpartner, partner
        cdef Py_ssize_t n, count
        cdef int code, typ
        cdef char *acc
        cdef char *tmp
        cdef size_t user = 0
        cdef bint commutes
        if size < 2:
            return False
        if self._op_code(op) is None:
            user = self._user_op(op, &commutes)
            if user == 0:
                return False
        if not self._reduction(sendbuf, recvbuf, op, &send, &recv, True, user != 0):
            return False
        try:
            n = recv.nbytes
            typ = recv.typ
            count = n // _item_bytes(typ)
            # A user-defined op: the recursive doubling below only (the
            # general path's for it up to the eager limit).
            code = 0 if user else <int>self._op_code(op)
            if user and not self._small(n):
                return False
            # (On two ranks the messages are the general path's at every
            # size: one each way; eager within the eager limit when ranks
            # wait for cores, see give_copies.)
            if not user and size == 2 and (self.give_copies or not self._small(n)) \
                    and pair_copies(size, rank, self.fast.world_ranks):
                return self._pair_reduce(send.data, recv.data, n, code, typ, -1,
                                         self.allreduce_tag)
            if not self._small(n):
                if n < _REDUCE_SCATTER_MIN or count < size:
                    return False
                self._streamed_allreduce(send.data, recv.data, n, code, typ,
                                         self.allreduce_tag)
                return True
            acc = recv.data
            if send.data != acc:
                ivmpi_move_plain(acc, send.data, n)
            tmp = self._scratch(1, n)
            while pof2 * 2 <= size:
                pof2 *= 2
            extra = size - pof2
            if rank < 2 * extra:
                if rank % 2 == 0:
                    self._send(acc, n, rank + 1, self.allreduce_tag)
                    newrank = -1
                else:
                    self._recv(tmp, n, rank - 1, self.allreduce_tag)
                    if user:
                        _combine_user(acc, tmp, n, count, recv.key, user, False)
                    else:
                        _combine(code, typ, acc, tmp, count, False)
                    newrank = rank // 2
            else:
                newrank = rank - extra
            if newrank >= 0:
                mask = 1
                while mask < pof2:
                    newpartner = newrank ^ mask
                    partner = newpartner * 2 + 1 if newpartner < extra else newpartner + extra
                    self._send(acc, n, partner, self.allreduce_tag)
                    self._recv(tmp, n, partner, self.allreduce_tag)
                    if user:
                        _combine_user(acc, tmp, n, count, recv.key, user, newrank < newpartner)
                    else:
                        _combine(code, typ, acc, tmp, count, newrank < newpartner)
                    mask <<= 1
            if rank < 2 * extra:
                if rank % 2:
                    self._send(acc, n, rank - 1, self.allreduce_tag)
                else:
                    self._recv(acc, n, rank + 1, self.allreduce_tag)
            return True
        finally:
            _close(&send)
            _close(&recv)

    cdef int _user_reduce(self, const char *data, char *out, Py_ssize_t n, Py_ssize_t count,
                          size_t datatype, size_t op, bint commutes, long root,
                          long tag) except -1:
        """A small Reduce with a user-defined op: the general path's
        binomial tree (Collectives._reduce_bytes), around the root for an
        op that commutes, else around rank 0 (which keeps the lower ranks
        on the left) and then to the root; out: the result at the root."""
        cdef long size = self.size, rank = self.rank, base, vrank, mask
        cdef char *acc = self._scratch(0, n)
        cdef char *tmp = self._scratch(1, n)
        ivmpi_move_plain(acc, data, n)
        base = root if commutes else 0
        vrank = (rank - base + size) % size
        mask = 1
        while mask < size:
            if vrank & mask:
                self._send(acc, n, (vrank - mask + base) % size, tag)
                break
            if vrank + mask < size:
                self._recv(tmp, n, (vrank + mask + base) % size, tag)
                _combine_user(acc, tmp, n, count, datatype, op, True)     # acc = acc op theirs
            mask <<= 1
        if base != root:
            if rank == base:
                self._send(acc, n, root, tag)
            elif rank == root:
                self._recv(acc, n, base, tag)
        if rank == root:
            ivmpi_move_plain(out, acc, n)
        return 0

    def Scan(self, sendbuf, recvbuf, op=None):
        if op is None:
            op = self.default_op
        if not self._try_prefix(sendbuf, recvbuf, op, True):
            self.general.Scan(sendbuf, recvbuf, op)

    def Exscan(self, sendbuf, recvbuf, op=None):
        if op is None:
            op = self.default_op
        if not self._try_prefix(sendbuf, recvbuf, op, False):
            self.general.Exscan(sendbuf, recvbuf, op)

    cdef bint _try_prefix(self, object sendbuf, object recvbuf, object op,
                          bint inclusive) except -1:
        """The general algorithm (ivmpi.collectives): the chain of
        prefix_chain, streamed in segments, for two ranks or more than one
        segment; else recursive doubling, where `partial` is the reduction
        over this rank's subcube, `result` over the ranks below it (and
        itself when inclusive), and the last round goes one way only (the
        lower partner's partial sum is not used again)."""
        cdef Span send, recv
        cdef long size = self.size, rank = self.rank, mask, partner
        cdef long tag = self.scan_tag if inclusive else self.exscan_tag
        cdef Py_ssize_t n, count, seg
        cdef int code, typ
        cdef bint have_result = inclusive, last
        cdef char *partial
        cdef char *tmp
        cdef char *result
        if size < 2 or not self._reduction(sendbuf, recvbuf, op, &send, &recv, True):
            return False
        try:
            n = recv.nbytes
            code = <int>self._op_code(op)
            typ = recv.typ
            seg = prefix_segment(size, rank, self.fast.world_ranks, n, _item_bytes(typ),
                                 <Py_ssize_t>self.eager_limit)
            if prefix_chained(size, n, seg):
                prefix_chain(self, send.data, recv.data, n, seg, code, typ, inclusive, tag)
                return True
            count = n // _item_bytes(typ)
            partial = self._scratch(0, n)
            tmp = self._scratch(1, n)
            result = self._scratch(2, n)
            ivmpi_copy_plain(partial, send.data, n)
            if inclusive:
                ivmpi_copy_plain(result, send.data, n)
            mask = 1
            while mask < size:
                partner = rank ^ mask
                if partner < size:
                    last = mask << 1 >= size
                    if not last or partner > rank:
                        self._send(partial, n, partner, tag)
                    if not last or partner < rank:
                        self._recv(tmp, n, partner, tag)
                    if partner < rank:
                        if not last:
                            _combine(code, typ, partial, tmp, count, False)
                        if have_result:
                            _combine(code, typ, result, tmp, count, False)
                        else:
                            ivmpi_copy_plain(result, tmp, n)
                            have_result = True
                    elif not last:
                        _combine(code, typ, partial, tmp, count, True)
                mask <<= 1
            if have_result:     # Exscan leaves rank 0's buffer untouched
                ivmpi_copy_plain(recv.data, result, n)
            return True
        finally:
            _close(&send)
            _close(&recv)

    def Reduce_scatter_block(self, sendbuf, recvbuf, op=None):
        if op is None:
            op = self.default_op
        if not self._try_reduce_scatter(sendbuf, recvbuf, None, op):
            self.general.Reduce_scatter_block(sendbuf, recvbuf, op)

    def Reduce_scatter(self, sendbuf, recvbuf, recvcounts=None, op=None):
        if op is None:
            op = self.default_op
        if recvcounts is None or not self._try_reduce_scatter(sendbuf, recvbuf, recvcounts, op):
            self.general.Reduce_scatter(sendbuf, recvbuf, recvcounts, op)

    cdef bint _try_reduce_scatter(self, object sendbuf, object recvbuf, object counts,
                                  object op) except -1:
        """The general algorithm: block j of every rank's input goes to rank
        j, which reduces it (reduce_scatter_stream).  counts None: equal
        blocks.  IN_PLACE: the input is the receive buffer whole, and this
        rank's block is written at its start."""
        cdef Span send, recv
        cdef long size = self.size, rank = self.rank, i
        cdef Py_ssize_t total, item, start, c
        cdef int typ
        cdef bint in_place = sendbuf is self.in_place
        cdef bytearray input_copy
        if size < 2 or self._op_code(op) is None:
            return False
        if counts is not None and ((type(counts) is not list and type(counts) is not tuple)
                                   or len(counts) != size):
            return False
        if not self._open(recvbuf, True, &recv):
            return False
        if in_place:
            # The input is the receive buffer whole (copied below, once the
            # call is known to be this path's).
            send.data, send.nbytes = recv.data, -1
            send.length = recv.length if recv.nbytes < 0 else recv.nbytes
            send.typ, send.key, send.pinned = recv.typ, recv.key, False
        elif not self._open(sendbuf, False, &send):
            _close(&recv)
            return False
        try:
            typ = send.typ
            if typ == 0 or recv.key != send.key or not op_applies(<int>self._op_code(op), typ):
                return False
            item = _item_bytes(typ)
            total = send.length if send.nbytes < 0 else send.nbytes * (size if counts is None
                                                                         else 1)
            recv.nbytes = recv.length if recv.nbytes < 0 else recv.nbytes
            if total > send.length or recv.nbytes > recv.length or total % item \
                    or recv.nbytes % item or (counts is None and total % (size * item)):
                return False
            # Byte offset and length of every rank's block in the input.
            start = 0
            for i in range(size):
                if counts is None:
                    c = total // size
                else:
                    if type(counts[i]) is not int or counts[i] < 0 or counts[i] > total:
                        return False
                    c = <Py_ssize_t>counts[i] * item
                self.soff[i] = start
                self.slen[i] = c
                start += c
            if in_place:
                recv.nbytes = self.slen[rank]       # this rank's block, at the start
            if start != total or self.slen[rank] != recv.nbytes:
                return False
            if in_place:
                # Reduced from a copy of the input: the result, written at the
                # start of the buffer, would overwrite blocks still to be sent.
                input_copy = PyByteArray_FromStringAndSize(send.data, total)
                send.data = PyByteArray_AS_STRING(input_copy)
            elif send.data < recv.data + recv.nbytes and recv.data < send.data + total:
                return False        # overlapping buffers: the general path reports or copies
            reduce_scatter_stream(self, send.data, recv.data, self.soff, self.slen, item,
                                  <int>self._op_code(op), typ, self.reduce_scatter_tag)
            return True
        finally:
            _close(&send)
            _close(&recv)

    # --- gather and scatter ----------------------------------------------------

    def Gather(self, sendbuf, recvbuf, root=0):
        if not self._try_rooted(sendbuf, recvbuf, root, False, False):
            self.general.Gather(sendbuf, recvbuf, root)

    def Scatter(self, sendbuf, recvbuf, root=0):
        if not self._try_rooted(sendbuf, recvbuf, root, True, False):
            self.general.Scatter(sendbuf, recvbuf, root)

    def Gatherv(self, sendbuf, recvbuf, root=0):
        if not self._try_rooted(sendbuf, recvbuf, root, False, True):
            self.general.Gatherv(sendbuf, recvbuf, root)

    def Scatterv(self, sendbuf, recvbuf, root=0):
        if not self._try_rooted(sendbuf, recvbuf, root, True, True):
            self.general.Scatterv(sendbuf, recvbuf, root)

    cdef bint _try_rooted(self, object sendbuf, object recvbuf, object root,
                          bint scatter, bint vector) except -1:
        """Gather(v) or Scatter(v) whose blocks fit the eager limit: as the
        general algorithms, block i travels between the root and rank i
        once (same tag), so ranks may mix the two paths."""
        cdef Span whole, mine
        cdef Py_ssize_t total, block, n
        cdef long r, i, size = self.size
        cdef long tag = self.scatter_tag if scatter else self.gather_tag
        cdef bint own, mine_open
        if type(root) is not int or size < 2:
            return False
        r = root
        if r < 0 or r >= size:
            return False
        if self.rank != r:
            # One block: the receive buffer of a scatter, the send buffer of a gather.
            if not self._open(recvbuf if scatter else sendbuf, scatter, &mine):
                return False
            try:
                n = mine.nbytes if mine.nbytes >= 0 else mine.length
                if n > mine.length or not self._small(n):
                    return False
                if scatter:
                    self._recv(mine.data, n, r, tag)
                else:
                    self._give(mine.data, n, r, tag)
                return True
            finally:
                _close(&mine)
        # The root's whole buffer: the send buffer of a scatter, the receive
        # buffer of a gather; its own block is the other one (or IN_PLACE).
        if vector:
            if not self._open_v(sendbuf if scatter else recvbuf, not scatter, &whole,
                                self.roff, self.rlen):
                return False
        else:
            if not self._open(sendbuf if scatter else recvbuf, not scatter, &whole):
                return False
            if whole.nbytes >= 0:
                block = whole.nbytes
                total = block * size
            else:
                total = whole.length
                block = total // size
            if total > whole.length or total % size:
                _close(&whole)
                return False
            for i in range(size):
                self.roff[i] = i * block
                self.rlen[i] = block
        own = (recvbuf if scatter else sendbuf) is not self.in_place
        mine_open = False
        try:
            for i in range(size):
                if not self._small(self.rlen[i]):
                    return False
            if own:
                if not self._open(recvbuf if scatter else sendbuf, scatter, &mine):
                    return False
                mine_open = True
                n = mine.nbytes if mine.nbytes >= 0 else mine.length
                # As the general path: the root's block fits the other side.
                if n > mine.length or (n < self.rlen[r] if scatter else n > self.rlen[r]):
                    return False
            if not scatter:
                if own:
                    ivmpi_move_plain(whole.data + self.roff[r], mine.data, n)
                for i in range(size):
                    if i != r:
                        self._recv(whole.data + self.roff[i], self.rlen[i], i, tag)
                return True
            # Every block that its rank copies from our memory announced
            # first, so the ranks copy side by side (and while we copy our
            # own block), then waited for.
            announced = []
            try:
                for i in range(size):
                    if i != r:
                        self._give(whole.data + self.roff[i], self.rlen[i], i, tag, announced)
                if own:
                    ivmpi_move_plain(mine.data, whole.data + self.roff[r], self.rlen[r])
            finally:
                for op in announced:
                    self.fast.finish(op, "a collective's step")
            return True
        finally:
            if mine_open:
                _close(&mine)
            _close(&whole)

    # --- allgather and alltoall --------------------------------------------------

    def Allgather(self, sendbuf, recvbuf):
        if not self._try_blocks(sendbuf, recvbuf, False, False):
            self.general.Allgather(sendbuf, recvbuf)

    def Allgatherv(self, sendbuf, recvbuf):
        if not self._try_blocks(sendbuf, recvbuf, False, True):
            self.general.Allgatherv(sendbuf, recvbuf)

    def Alltoall(self, sendbuf, recvbuf):
        if not self._try_blocks(sendbuf, recvbuf, True, False):
            self.general.Alltoall(sendbuf, recvbuf)

    def Alltoallv(self, sendbuf, recvbuf):
        if not self._try_blocks(sendbuf, recvbuf, True, True):
            self.general.Alltoallv(sendbuf, recvbuf)

    cdef bint _even_blocks(self, Span *s, Py_ssize_t *off, Py_ssize_t *length):
        """Byte offsets and lengths of the `size` equal blocks of s (count
        per block when the spec names one); False if they do not fit."""
        cdef Py_ssize_t block, total, i
        if s.nbytes >= 0:
            block = s.nbytes
            total = block * self.size
        else:
            total = s.length
            block = total // self.size
        if total > s.length or total % self.size:
            return False
        for i in range(self.size):
            off[i] = i * block
            length[i] = block
        return True

    cdef bint _try_blocks(self, object sendbuf, object recvbuf, bint alltoall,
                          bint vector) except -1:
        """Allgather(v) (ring) or Alltoall(v) (pairwise exchange) whose blocks
        fit the eager limit: the general algorithms' steps, partners and
        tags, so ranks may mix the two paths."""
        cdef Span recv, send
        cdef long size = self.size, rank = self.rank, step, dest, source, i, j
        cdef Py_ssize_t n
        cdef char *copy
        cdef bint in_place = sendbuf is self.in_place, have_send = False
        if size < 2:
            return False
        if vector:
            if not self._open_v(recvbuf, True, &recv, self.roff, self.rlen):
                return False
        else:
            if not self._open(recvbuf, True, &recv):
                return False
            if not self._even_blocks(&recv, self.roff, self.rlen):
                _close(&recv)
                return False
        try:
            for i in range(size):
                if not self._small(self.rlen[i]):
                    return False
            if not in_place:
                if alltoall and vector:
                    if not self._open_v(sendbuf, False, &send, self.soff, self.slen):
                        return False
                elif not self._open(sendbuf, False, &send):
                    return False
                have_send = True
                if alltoall and not vector and not self._even_blocks(&send, self.soff,
                                                                     self.slen):
                    return False
                if not alltoall:
                    n = send.nbytes if send.nbytes >= 0 else send.length
                    if n > send.length or n > self.rlen[rank]:
                        return False
                    ivmpi_move_plain(recv.data + self.roff[rank], send.data, n)
                    self.slen[rank] = n
                else:
                    for i in range(size):
                        if not self._small(self.slen[i]):
                            return False
                    if self.slen[rank] > self.rlen[rank]:
                        return False
                    ivmpi_move_plain(recv.data + self.roff[rank], send.data + self.soff[rank],
                            self.slen[rank])
            elif alltoall:
                # The blocks are overwritten as they arrive: send from a copy.
                n = 0
                for i in range(size):
                    if self.roff[i] + self.rlen[i] > n:
                        n = self.roff[i] + self.rlen[i]
                copy = self._scratch(2, n)
                ivmpi_copy_plain(copy, recv.data, n)
                for i in range(size):
                    self.soff[i] = self.roff[i]
                    self.slen[i] = self.rlen[i]
            if alltoall:
                copy = send.data if have_send else PyByteArray_AS_STRING(self.part)
                for step in range(1, size):
                    dest = (rank + step) % size
                    source = (rank - step + size) % size
                    self._exchange(copy + self.soff[dest], self.slen[dest], dest,
                                   recv.data + self.roff[source], self.rlen[source], source,
                                   self.alltoall_tag)
            else:
                dest = (rank + 1) % size
                source = (rank - 1 + size) % size
                for step in range(size - 1):
                    i = (rank - step + size) % size
                    j = (rank - step - 1 + 2 * size) % size
                    if step == 0 and have_send and self.slen[rank] == self.rlen[rank]:
                        # Our own block from the caller's buffer, as Open
                        # MPI's two-rank allgather sends it: a peer that
                        # copies from our memory reads it there, where the
                        # copy just made into the receive buffer would
                        # have to come from this core's cache line by line
                        # (64 KiB on 2 ranks: 15 us that way, eager 10).
                        self._exchange(send.data, self.rlen[i], dest, recv.data + self.roff[j],
                                       self.rlen[j], source, self.allgather_tag)
                        continue
                    # The blocks forwarded go eagerly, for the same reason.
                    self._send(recv.data + self.roff[i], self.rlen[i], dest, self.allgather_tag)
                    self._recv(recv.data + self.roff[j], self.rlen[j], source,
                               self.allgather_tag)
            return True
        finally:
            if have_send:
                _close(&send)
            _close(&recv)


# --- staging into the heap ------------------------------------------------------

def exchange_objects(FastPath fast, object general, object recv_general, list items,
                     list sends, list dests, list tags, list waiting, Py_ssize_t indegree,
                     str what):
    """The messages of the object neighbourhood collectives (see
    ivmpi.topocomm's _objects, which plans them): items[k] pickled (an
    object repeated in a row, once) and sent for each (k, dest, tag) of
    sends, eager pickles straight into the rings, the rest by `general`'s
    _send_pickles, large ones out of the heap whatever the communicator's
    size (streamed, two messages each way between the same two ranks
    wait for each other); then the result of each receive (k, source, tag) of
    waiting, None for the other blocks.  A pass takes every eager message
    at the head of its ring (frames from one rank come in the order it
    sent them, which may not be the order of the receives; a receive waits
    for earlier ones with the same source and tag); when a pass takes
    nothing, recv_general(source, tag, what) receives the first pickle through
    the engine.  Returns (results, requests still to wait for or None)."""
    cdef Py_ssize_t i, n = len(sends)
    cdef list datas = []
    cdef list later, results
    cdef set blocked
    cdef int spins
    dumps, loads = fast.dumps, fast.loads
    last = data = None
    for i in range(n):
        item = items[(<tuple>sends[i])[0]]
        if item is not last or data is None:
            last, data = item, dumps(item)
        datas.append(data)
    requests = None
    for i in range(n):
        if not fast.send(datas[i], dests[i], tags[i]):
            requests = general._send_pickles(datas[i:], dests[i:], tags[i:], what, True)
            break
    results = [None] * indegree
    while waiting:
        later, blocked, spins = [], set(), fast.spins
        for entry in waiting:
            k, source, tag = <tuple>entry
            if (source, tag) not in blocked:
                data = fast.recv_bytes(source, tag, spins)
                spins = 1
                if data is not None:
                    results[k] = loads(data) if len(data) else None
                    continue
                blocked.add((source, tag))
            later.append(entry)
        if len(later) == len(waiting):
            k, source, tag = <tuple>later.pop(0)
            data = recv_general(source, tag, what)
            results[k] = loads(data) if data else None
        waiting = later
    return results, requests


def stage_into(dst, src):
    """Copy the bytes of src to the start of dst, a staging buffer in this
    rank's heap that peers copy out next (stage_copy: plain stores, or
    streaming ones in the machine's slow phases).  Not for strict-align
    mappings, which must keep to the copy core's aligned accesses: the
    caller checks.  Both buffers must be contiguous bytes."""
    cdef Py_buffer d, s
    PyObject_GetBuffer(dst, &d, PyBUF_SIMPLE | PyBUF_WRITABLE)
    try:
        PyObject_GetBuffer(src, &s, PyBUF_SIMPLE)
        try:
            if s.len > d.len:
                raise ValueError(f"{s.len} bytes do not fit a buffer of {d.len}")
            if s.len >= NOGIL_MIN_BYTES:
                with nogil:
                    stage_copy(<char *>d.buf, <const char *>s.buf, s.len)
            else:
                stage_copy(<char *>d.buf, <const char *>s.buf, s.len)
        finally:
            PyBuffer_Release(&s)
    finally:
        PyBuffer_Release(&d)

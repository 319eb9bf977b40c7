# The one-call collectives (included by _fastcopy.pyx after _fastpath.pxi,
# whose fast sends and receives they use).

# --- Small collectives ------------------------------------------------------
# Barrier and small reductions in one call: the loop over rounds, the sends
# and receives (FastPath, falling back to the communicator's own Send/Recv
# for any step the fast path cannot take) and, for the common predefined
# operations on plain numbers, the combining step in C.

from libc.stdint cimport int32_t, int64_t

cdef enum:
    OP_SUM = 1
    OP_PROD = 2
    OP_MAX = 3
    OP_MIN = 4

cdef enum:
    T_F64 = 1
    T_F32 = 2
    T_I64 = 3
    T_I32 = 4


ctypedef fused _number:
    double
    float
    int64_t
    int32_t


cdef inline void _combine_typed(int op, _number *acc, const _number *other, Py_ssize_t n,
                                bint acc_is_lower) noexcept nogil:
    # acc = lower (op) higher, element-wise, where lower is the value from the
    # lower rank: both partners of a round then compute bit-identical results,
    # even for -0.0/+0.0 and NaN under MAX/MIN.
    cdef Py_ssize_t i
    cdef _number x, y
    for i in range(n):
        if acc_is_lower:
            x = acc[i]
            y = other[i]
        else:
            x = other[i]
            y = acc[i]
        if op == OP_SUM:
            acc[i] = x + y
        elif op == OP_PROD:
            acc[i] = x * y
        elif op == OP_MAX:
            acc[i] = x if x >= y else y
        else:
            acc[i] = x if x <= y else y


cdef void _combine(int op, int typ, char *acc, const char *other, Py_ssize_t n,
                   bint acc_is_lower) noexcept nogil:
    if typ == T_F64:
        _combine_typed[double](op, <double *>acc, <const double *>other, n, acc_is_lower)
    elif typ == T_F32:
        _combine_typed[float](op, <float *>acc, <const float *>other, n, acc_is_lower)
    elif typ == T_I64:
        _combine_typed[int64_t](op, <int64_t *>acc, <const int64_t *>other, n, acc_is_lower)
    else:
        _combine_typed[int32_t](op, <int32_t *>acc, <const int32_t *>other, n, acc_is_lower)


cdef bytearray _EMPTY = bytearray(0)     # the barrier's message: nothing


cdef int small_barrier(FastPath fast, long rank, long size, long tag, int spins,
                       object send_slow, object recv_slow) except -1:
    """Dissemination barrier: round k sends to rank + 2^k, receives from rank - 2^k."""
    cdef long distance = 1
    cdef bytearray empty = _EMPTY
    while distance < size:
        if not fast.send(empty, (rank + distance) % size, tag):
            send_slow(empty, (rank + distance) % size, tag)
        if fast.recv(empty, (rank - distance + size) % size, tag, spins) < 0:
            recv_slow(empty, (rank - distance + size) % size, tag)
        distance <<= 1
    return 0


cdef int small_allreduce(FastPath fast, object acc, object scratch, int op, int typ,
                         long rank, long size, long tag, int spins, object send_slow,
                         object recv_slow) except -1:
    """Recursive-doubling allreduce of acc in place (size a power of two).

    acc and scratch are writable contiguous buffers of the same length; op
    and typ are one of the OP_* and T_* codes (checked by the caller).
    """
    cdef Py_buffer a, b
    cdef long mask = 1
    cdef long partner
    cdef Py_ssize_t count, item
    PyObject_GetBuffer(acc, &a, PyBUF_SIMPLE | PyBUF_WRITABLE)
    try:
        PyObject_GetBuffer(scratch, &b, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            item = 8 if typ == T_F64 or typ == T_I64 else 4
            if a.len != b.len or a.len % item:
                raise ValueError("allreduce buffers must match and hold whole elements")
            count = a.len // item
            while mask < size:
                partner = rank ^ mask
                if not fast.send(acc, partner, tag):
                    send_slow(acc, partner, tag)
                if fast.recv(scratch, partner, tag, spins) < 0:
                    recv_slow(scratch, partner, tag)
                _combine(op, typ, <char *>a.buf, <const char *>b.buf, count, rank < partner)
                mask <<= 1
        finally:
            PyBuffer_Release(&b)
    finally:
        PyBuffer_Release(&a)
    return 0


SMALL_OPS = {"SUM": OP_SUM, "PROD": OP_PROD, "MAX": OP_MAX, "MIN": OP_MIN}


cdef class SmallCollectives:
    """A communicator's common small collectives as one Cython call each.

    Built over the hidden twin's FastPath.  Each call takes the small cases
    its method describes (plain numpy buffers up to the eager limit, the
    predefined SUM/PROD/MAX/MIN on numbers) and hands anything else to the
    same method of `general`, the communicator's ivmpi.collectives object,
    whose algorithm it mirrors step for step (and which also reports every
    error).  `tags` maps each collective's name to its tag there.
    """
    cdef FastPath fast
    cdef long rank, size
    cdef long barrier_tag, allreduce_tag, bcast_tag, reduce_tag
    cdef long allgather_tag, alltoall_tag, gather_tag, scatter_tag
    cdef uint64_t eager_limit
    cdef dict opcodes
    cdef object send_slow, recv_slow, general, in_place, default_op
    cdef object last_op, last_code
    cdef bytearray scratch

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
        self.eager_limit = fast.eager_limit
        self.opcodes = opcodes
        self.send_slow = send_slow
        self.recv_slow = recv_slow
        self.general = general
        self.in_place = in_place
        self.default_op = default_op
        self.scratch = bytearray(0)

    def Barrier(self):
        small_barrier(self.fast, self.rank, self.size, self.barrier_tag, self.fast.spins,
                      self.send_slow, self.recv_slow)

    def Bcast(self, buf, root=0):
        if not self._try_bcast(buf, root):
            self.general.Bcast(buf, root)

    cdef bint _try_bcast(self, object buf, object root) except -1:
        """A broadcast of a plain buffer up to the eager limit: the general
        algorithm's binomial tree (same tag, same parents and children, so
        ranks may mix the two paths), each step one fast send or receive."""
        cdef Py_ssize_t extent, nbytes, length
        cdef long r, vrank, mask, peer, size = self.size
        cdef char *data
        if type(root) is not int or size < 2:
            return False
        r = root
        if r < 0 or r >= size:
            return False
        plain = self.fast._plain(buf, &extent, &nbytes)
        if plain is None or not _direct(plain, self.rank != r, &data, &length):
            return False
        if nbytes < 0:
            nbytes = length
        if nbytes > length or <uint64_t>nbytes > self.eager_limit:
            return False
        vrank = (self.rank - r + size) % size
        mask = 1
        while mask < size:
            if vrank & mask:
                peer = (vrank - mask + r) % size
                if self.fast.recv(buf, peer, self.bcast_tag, self.fast.spins) < 0:
                    self.recv_slow(buf, peer, self.bcast_tag)
                break
            mask <<= 1
        mask >>= 1
        while mask > 0:
            if vrank + mask < size:
                peer = (vrank + mask + r) % size
                if not self.fast.send(buf, peer, self.bcast_tag):
                    self.send_slow(buf, peer, self.bcast_tag)
            mask >>= 1
        return True

    def Reduce(self, sendbuf, recvbuf, op=None, root=0):
        if op is None:
            op = self.default_op
        if not self._try_reduce(sendbuf, recvbuf, op, root):
            self.general.Reduce(sendbuf, recvbuf, op, root)

    cdef object _op_code(self, object op):
        """The C code of a predefined op this class combines, or None.  The
        same op object comes back call after call: remember it."""
        if op is self.last_op:
            return self.last_code
        code = self.opcodes.get(getattr(op, "handle", None))
        if code is not None:
            self.last_op, self.last_code = op, code
        return code

    cdef bint _try_reduce(self, object sendbuf, object recvbuf, object op, object root) except -1:
        """Reduce of small numpy arrays with SUM/PROD/MAX/MIN: the general
        algorithm's binomial tree around the root (same tag, same partners,
        same operand order, so ranks may mix the two paths), each step one
        fast send or receive and a combine in C."""
        cdef cnp.ndarray send, recv
        cdef int typ
        cdef long r, vrank, mask, size = self.size
        cdef Py_ssize_t nbytes
        cdef bytearray acc, tmp
        if type(root) is not int or size < 2:
            return False
        r = root
        if r < 0 or r >= size:
            return False
        code = self._op_code(op)
        if code is None:
            return False
        if self.rank == r:
            if type(recvbuf) is not cnp.ndarray:
                return False
            recv = <cnp.ndarray>recvbuf
            if not cnp.PyArray_IS_C_CONTIGUOUS(recv) or not cnp.PyArray_ISWRITEABLE(recv) \
                    or not cnp.PyArray_ISNOTSWAPPED(recv):
                return False
            send = recv if sendbuf is self.in_place else sendbuf \
                if type(sendbuf) is cnp.ndarray else None
            if send is None or cnp.PyArray_TYPE(send) != cnp.PyArray_TYPE(recv) \
                    or cnp.PyArray_NBYTES(send) != cnp.PyArray_NBYTES(recv):
                return False
        else:
            if type(sendbuf) is not cnp.ndarray:
                return False
            send = <cnp.ndarray>sendbuf
        if not cnp.PyArray_IS_C_CONTIGUOUS(send) or not cnp.PyArray_ISNOTSWAPPED(send):
            return False
        typ = self._type_code(send)
        nbytes = cnp.PyArray_NBYTES(send)
        if typ == 0 or <uint64_t>nbytes > self.eager_limit:
            return False
        acc = PyByteArray_FromStringAndSize(<char *>cnp.PyArray_DATA(send), nbytes)
        tmp = bytearray(nbytes)
        vrank = (self.rank - r + size) % size
        mask = 1
        while mask < size:
            if vrank & mask:
                peer = (vrank - mask + r) % size
                if not self.fast.send(acc, peer, self.reduce_tag):
                    self.send_slow(acc, peer, self.reduce_tag)
                break
            if vrank + mask < size:
                peer = (vrank + mask + r) % size
                if self.fast.recv(tmp, peer, self.reduce_tag, self.fast.spins) < 0:
                    self.recv_slow(tmp, peer, self.reduce_tag)
                _combine(<int>code, typ, PyByteArray_AS_STRING(acc), PyByteArray_AS_STRING(tmp),
                         nbytes // cnp.PyArray_ITEMSIZE(send), True)
            mask <<= 1
        if self.rank == r:
            memcpy(cnp.PyArray_DATA(recv), PyByteArray_AS_STRING(acc), nbytes)
        return True

    def Allgather(self, sendbuf, recvbuf):
        if not self._try_blocks(sendbuf, recvbuf, False):
            self.general.Allgather(sendbuf, recvbuf)

    def Alltoall(self, sendbuf, recvbuf):
        if not self._try_blocks(sendbuf, recvbuf, True):
            self.general.Alltoall(sendbuf, recvbuf)

    def Gather(self, sendbuf, recvbuf, root=0):
        if not self._try_rooted(sendbuf, recvbuf, root, False):
            self.general.Gather(sendbuf, recvbuf, root)

    def Scatter(self, sendbuf, recvbuf, root=0):
        if not self._try_rooted(sendbuf, recvbuf, root, True):
            self.general.Scatter(sendbuf, recvbuf, root)

    cdef bint _try_rooted(self, object sendbuf, object recvbuf, object root,
                          bint scatter) except -1:
        """Gather or Scatter of numpy arrays whose blocks fit the eager limit:
        as the general algorithms, block i travels between the root and rank
        i once (same tag), so ranks may mix the two paths."""
        cdef cnp.ndarray whole, mine
        cdef Py_ssize_t total, block
        cdef long r, i, size = self.size
        cdef long tag = self.scatter_tag if scatter else self.gather_tag
        if type(root) is not int or size < 2:
            return False
        r = root
        if r < 0 or r >= size:
            return False
        # The root's whole buffer is the send buffer of a scatter, the receive
        # buffer of a gather; the other side is one block (or IN_PLACE).
        if self.rank != r:
            if not self._plain_array(recvbuf if scatter else sendbuf, scatter):
                return False
            mine = <cnp.ndarray>(recvbuf if scatter else sendbuf)
            block = cnp.PyArray_NBYTES(mine)
            if <uint64_t>block > self.eager_limit:
                return False
            if scatter:
                if self.fast.recv_ptr(<char *>cnp.PyArray_DATA(mine), block, r, tag,
                                      self.fast.spins) < 0:
                    self.recv_slow(mine, r, tag)
            elif not self.fast.send_ptr(<const char *>cnp.PyArray_DATA(mine), block, r, tag):
                self.send_slow(mine, r, tag)
            return True
        if not self._plain_array(sendbuf if scatter else recvbuf, not scatter):
            return False
        whole = <cnp.ndarray>(sendbuf if scatter else recvbuf)
        total = cnp.PyArray_NBYTES(whole)
        if total % size:
            return False
        block = total // size
        if <uint64_t>block > self.eager_limit:
            return False
        own = recvbuf if scatter else sendbuf
        if own is not self.in_place:
            if not self._plain_array(own, scatter):
                return False
            mine = <cnp.ndarray>own
            if cnp.PyArray_TYPE(mine) != cnp.PyArray_TYPE(whole) \
                    or cnp.PyArray_NBYTES(mine) != block:
                return False
            if scatter:
                memmove(cnp.PyArray_DATA(mine), <char *>cnp.PyArray_DATA(whole) + r * block, block)
            else:
                memmove(<char *>cnp.PyArray_DATA(whole) + r * block, cnp.PyArray_DATA(mine), block)
        for i in range(size):
            if i == r:
                continue
            if scatter:
                if not self.fast.send_ptr(<const char *>cnp.PyArray_DATA(whole) + i * block,
                                          block, i, tag):
                    self.send_slow(memoryview(whole).cast("B")[i * block:(i + 1) * block], i, tag)
            elif self.fast.recv_ptr(<char *>cnp.PyArray_DATA(whole) + i * block, block, i, tag,
                                    self.fast.spins) < 0:
                self.recv_slow(memoryview(whole).cast("B")[i * block:(i + 1) * block], i, tag)
        return True

    cdef int _exchange(self, cnp.ndarray out, Py_ssize_t out_at, cnp.ndarray into,
                       Py_ssize_t in_at, Py_ssize_t n, long dest, long source,
                       long tag) except -1:
        """Sendrecv of one block (eager: send, then receive), as the general
        algorithms do it; each half falls back to the twin's own call."""
        if not self.fast.send_ptr(<const char *>cnp.PyArray_DATA(out) + out_at, n, dest, tag):
            self.send_slow(memoryview(out).cast("B")[out_at:out_at + n], dest, tag)
        if self.fast.recv_ptr(<char *>cnp.PyArray_DATA(into) + in_at, n, source, tag,
                              self.fast.spins) < 0:
            self.recv_slow(memoryview(into).cast("B")[in_at:in_at + n], source, tag)
        return 0

    cdef bint _plain_array(self, object obj, bint writable):
        cdef cnp.ndarray arr
        cdef int num
        if type(obj) is not cnp.ndarray:
            return False
        arr = <cnp.ndarray>obj
        num = cnp.PyArray_TYPE(arr)
        return ((num <= cnp.NPY_CLONGDOUBLE or num == cnp.NPY_FLOAT16)
                and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISNOTSWAPPED(arr)
                and (not writable or cnp.PyArray_ISWRITEABLE(arr)))

    cdef bint _try_blocks(self, object sendbuf, object recvbuf, bint alltoall) except -1:
        """Allgather (ring) or Alltoall (pairwise exchange) of numpy arrays
        whose blocks fit the eager limit: the general algorithms' steps,
        partners and tags, so ranks may mix the two paths."""
        cdef cnp.ndarray recv, send
        cdef Py_ssize_t total, block
        cdef long size = self.size, rank = self.rank, step, dest, source
        if size < 2 or not self._plain_array(recvbuf, True):
            return False
        recv = <cnp.ndarray>recvbuf
        total = cnp.PyArray_NBYTES(recv)
        if total % size:
            return False
        block = total // size
        if <uint64_t>block > self.eager_limit:
            return False
        if sendbuf is self.in_place:
            send = recv.copy() if alltoall else None
        elif self._plain_array(sendbuf, False):
            send = <cnp.ndarray>sendbuf
            if cnp.PyArray_TYPE(send) != cnp.PyArray_TYPE(recv) \
                    or cnp.PyArray_NBYTES(send) != (total if alltoall else block):
                return False
        else:
            return False
        if send is not None:
            memmove(<char *>cnp.PyArray_DATA(recv) + rank * block,
                    <const char *>cnp.PyArray_DATA(send) + (rank * block if alltoall else 0),
                    block)
        if alltoall:
            for step in range(1, size):
                dest = (rank + step) % size
                source = (rank - step + size) % size
                self._exchange(send, dest * block, recv, source * block, block, dest, source,
                               self.alltoall_tag)
        else:
            dest = (rank + 1) % size
            source = (rank - 1 + size) % size
            for step in range(size - 1):
                self._exchange(recv, ((rank - step + size) % size) * block, recv,
                               ((rank - step - 1 + 2 * size) % size) * block, block, dest,
                               source, self.allgather_tag)
        return True

    def Allreduce(self, sendbuf, recvbuf, op=None):
        if op is None:
            op = self.default_op
        if not self._try_allreduce(sendbuf, recvbuf, op):
            self.general.Allreduce(sendbuf, recvbuf, op)

    cdef int _type_code(self, cnp.ndarray arr):
        cdef int num = cnp.PyArray_TYPE(arr)
        cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(arr)
        if num == cnp.NPY_DOUBLE:
            return T_F64
        if num == cnp.NPY_FLOAT:
            return T_F32
        if num == cnp.NPY_INT or num == cnp.NPY_LONG or num == cnp.NPY_LONGLONG:
            return T_I64 if item == 8 else (T_I32 if item == 4 else 0)
        return 0

    cdef bint _try_allreduce(self, object sendbuf, object recvbuf, object op) except -1:
        cdef cnp.ndarray recv, send
        cdef int typ
        cdef object code
        cdef Py_ssize_t nbytes
        if self.size < 2 or (self.size & (self.size - 1)) or type(recvbuf) is not cnp.ndarray:
            return False
        recv = <cnp.ndarray>recvbuf
        nbytes = cnp.PyArray_NBYTES(recv)
        if <uint64_t>nbytes > self.eager_limit or not cnp.PyArray_IS_C_CONTIGUOUS(recv) \
                or not cnp.PyArray_ISWRITEABLE(recv) or not cnp.PyArray_ISNOTSWAPPED(recv):
            return False
        typ = self._type_code(recv)
        if typ == 0:
            return False
        code = self._op_code(op)
        if code is None:
            return False
        if sendbuf is not self.in_place:
            if type(sendbuf) is not cnp.ndarray:
                return False
            send = <cnp.ndarray>sendbuf
            # Same type and element count is what MPI asks; shapes may differ.
            if cnp.PyArray_TYPE(send) != cnp.PyArray_TYPE(recv) \
                    or cnp.PyArray_NBYTES(send) != nbytes \
                    or not cnp.PyArray_IS_C_CONTIGUOUS(send) or not cnp.PyArray_ISNOTSWAPPED(send):
                return False
            memcpy(cnp.PyArray_DATA(recv), cnp.PyArray_DATA(send), nbytes)
        if len(self.scratch) != nbytes:
            self.scratch = bytearray(nbytes)
        small_allreduce(self.fast, recv, self.scratch, <int>code, typ, self.rank, self.size,
                        self.allreduce_tag, self.fast.spins, self.send_slow, self.recv_slow)
        return True

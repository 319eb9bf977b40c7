"""Derived datatypes: where their bytes are, and moving them.

A derived datatype describes bytes scattered around an origin (a vector's
column, a subarray's face, a struct's fields).  ivmpi flattens each one
once into *runs*: ``(offset, length)`` pairs relative to the origin of one
element, in the order of MPI's type map (the order Pack uses), adjacent
runs merged.  Element i of a count lies ``i * extent`` further on.  The
Cython ``RunPlan`` of each type then copies between the
user's memory and a contiguous staging buffer, which is what travels
through the region (the region never sees a derived type).

Flattening reads the type's own constructor arguments (``Datatype.decode``)
and builds the runs with numpy; the few constructors it does not unfold
itself (``Create_darray``, Fortran parameterised types) are probed through
the MPI library's ``Pack``.  The result is kept as an MPI attribute of the
datatype (``Datatype.Set_attr``), so it goes away with the type when the
user frees it, and a new type that reuses a freed handle starts afresh.
"""
import numpy as np

from ._fastcopy import RunPlan  # noqa: F401 (also for tests)
from .errors import BufferSpecError
from .lib import MPI


class DatatypeError(BufferSpecError, MPI.Exception):
    """A datatype MPI cannot use (null, freed, not committed): MPI's
    ERR_TYPE, the exception mpi4py raises, and a BufferSpecError as
    ivmpi's other unusable specs are."""

    def __init__(self, detail):
        MPI.Exception.__init__(self, MPI.ERR_TYPE)
        self.detail = detail

    def __str__(self):
        return f"{MPI.Exception.__str__(self)}: {self.detail}"


# A type whose runs are probed byte by byte must fit this many bytes.
PROBE_LIMIT = 64 << 20
# Types with more runs than this (a vector of millions of single doubles)
# are gathered and scattered by the MPI library's Pack/Unpack instead:
# their run tables would cost more memory than they save.
MAX_RUNS = 1 << 20


class TooManyRuns(Exception):
    pass


class Layout:
    """The flattened form of a datatype.

    offsets, lengths  int64 arrays: the runs of one element
    plan              the RunPlan (Cython) that copies elements by those runs
    size              bytes of data in one element (sum of lengths)
    extent            distance between consecutive elements
    low, high         the lowest and one past the highest byte an element
                      touches, relative to its origin (true lb and ub)
    basic             the one predefined type every byte belongs to, or
                      None for a mix (a struct of ints and doubles)
    nbasic            how many of those basic elements one element holds
    """
    __slots__ = ("offsets", "lengths", "plan", "size", "extent", "low", "high", "basic", "nbasic",
                 "datatype")

    def __init__(self, datatype, offsets, lengths, extent, basic, nbasic):
        self.size = datatype.Get_size()
        self.extent = extent
        self.low, true_extent = datatype.Get_true_extent()
        self.high = self.low + true_extent
        self.basic = basic
        self.nbasic = nbasic
        self.datatype = None
        if offsets is None:
            # Too many runs: the library packs (see MAX_RUNS).
            self.datatype = datatype
            self.offsets = self.lengths = self.plan = None
            return
        self.offsets = np.array(offsets, dtype=np.int64)
        self.lengths = np.array(lengths, dtype=np.int64)
        # The plan is checked once against these tables: they must not change.
        self.offsets.setflags(write=False)
        self.lengths.setflags(write=False)
        self.plan = RunPlan(self.offsets, self.lengths)
        if len(self.offsets):
            self.low, self.high = self.plan.low, self.plan.high

    def span(self, count):
        """(first, end): the bytes count elements touch, from the origin of
        the first element (extent may be negative: then the last element
        lies lowest)."""
        if count <= 0 or not self.size:
            return 0, 0
        last = (count - 1) * self.extent
        return min(0, last) + self.low, max(0, last) + self.high

    def check(self, count, available, origin=0):
        """Raise unless count elements starting at origin stay inside a
        buffer of `available` bytes."""
        first, end = self.span(count)
        if first + origin < 0 or end + origin > available:
            raise BufferSpecError(
                f"{count} elements of the datatype reach bytes {first + origin} to "
                f"{end + origin} of a buffer of {available} bytes")

    def gather(self, src, origin, count, dst):
        """Copy count elements of src (the origin of the first at byte
        `origin`) packed into dst, which holds count * size bytes."""
        if self.offsets is None:
            self._library_copy(src, origin, count, dst, True)
            return
        self.plan.gather(src, origin, count, self.extent, dst)

    def scatter(self, src, dst, origin, count):
        """The reverse of gather: packed src into count elements of dst."""
        if self.offsets is None:
            self._library_copy(dst, origin, count, src, False)
            return
        self.plan.scatter(src, dst, origin, count, self.extent)


    def _library_copy(self, user, origin, count, packed, gather):
        user_bytes = memoryview(user).nbytes
        self.check(count, user_bytes, origin)
        if memoryview(packed).nbytes != count * self.size:
            raise BufferSpecError(f"packed buffer holds {len(packed)} bytes, {count} "
                                  f"elements need {count * self.size}")
        if not count:
            return
        # The elements placed at `origin`, over the whole buffer: one Pack.
        placed = MPI.Datatype.Create_struct([count], [origin], [self.datatype])
        whole = placed.Create_resized(0, user_bytes).Commit()
        placed.Free()
        try:
            if gather:
                whole.Pack(user, packed, 0, MPI.COMM_SELF)
            else:
                whole.Unpack(packed, 0, user, MPI.COMM_SELF)
        finally:
            whole.Free()


_KEYVAL = None
_PREDEFINED = {}


def layout(datatype):
    """The Layout of a committed datatype (computed once, then kept)."""
    global _KEYVAL
    if datatype.is_predefined:
        handle = datatype.handle
        found = _PREDEFINED.get(handle)
        if found is None:
            found = _PREDEFINED[handle] = _flatten(datatype)
        return found
    if _KEYVAL is None:
        _KEYVAL = MPI.Datatype.Create_keyval()
    found = datatype.Get_attr(_KEYVAL)
    if found is None:
        try:
            # Packing zero bytes is how MPI itself notices an uncommitted type.
            datatype.Pack(b"", bytearray(0), 0, MPI.COMM_SELF)
        except MPI.Exception:
            raise DatatypeError(f"datatype {datatype.Get_name() or 'derived'} is not "
                                f"committed (call .Commit() first)") from None
        found = _flatten(datatype)
        datatype.Set_attr(_KEYVAL, found)
    return found


def _flatten(datatype):
    basic, nbasic = _basic(datatype)
    try:
        offsets, lengths = _merge(*_runs(datatype))
    except TooManyRuns:
        offsets = lengths = None
    return Layout(datatype, offsets, lengths, datatype.Get_extent()[1], basic, nbasic)


def _merge(offsets, lengths):
    """Drop empty runs and join each run to the previous one it continues."""
    keep = lengths > 0
    offsets, lengths = offsets[keep], lengths[keep]
    if len(offsets) < 2:
        return offsets, lengths
    starts = np.flatnonzero(np.concatenate(
        ([True], offsets[1:] != offsets[:-1] + lengths[:-1])))
    return offsets[starts], np.add.reduceat(lengths, starts)


def _replicate(offsets, lengths, origins):
    """The runs of a base type laid out once at each of origins (in order),
    merged."""
    origins = np.asarray(origins, dtype=np.int64).ravel()
    if len(origins) * len(offsets) > MAX_RUNS:
        raise TooManyRuns
    return _merge((origins[:, None] + offsets[None, :]).ravel(), np.tile(lengths, len(origins)))


def _runs(datatype):
    """Runs of one element, in type-map order, not yet merged."""
    if datatype.is_predefined:
        size, extent = datatype.Get_size(), datatype.Get_extent()[1]
        if size == extent:
            return np.zeros(1, np.int64), np.full(1, size, np.int64)
        return _probe(datatype)      # pair types such as SHORT_INT have padding
    base, combiner, p = datatype.decode()
    if combiner in ("DUP", "RESIZED"):
        return _runs(base)
    if combiner == "STRUCT":
        parts = [_replicate(*_runs(t), d + np.arange(n, dtype=np.int64) * t.Get_extent()[1])
                 for n, d, t in zip(p["blocklengths"], p["displacements"], p["datatypes"])]
        return _concat(parts)
    offsets, lengths = _runs(base)
    ext = base.Get_extent()[1]
    if base.Get_size() == 0 or datatype.Get_size() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # A base that is one run over its whole extent (a double, a contiguous
    # type): each block of consecutive base elements is a single run.
    dense = len(offsets) == 1 and offsets[0] == 0 and lengths[0] == ext
    elements = datatype.Get_size() // base.Get_size()
    if not dense and elements * len(offsets) > MAX_RUNS:
        raise TooManyRuns
    if combiner == "CONTIGUOUS":
        if dense:
            return np.zeros(1, np.int64), np.full(1, p["count"] * ext, np.int64)
        origins = np.arange(p["count"], dtype=np.int64) * ext
    elif combiner in ("VECTOR", "HVECTOR"):
        step = p["stride"] * (ext if combiner == "VECTOR" else 1)
        if dense:
            if p["count"] > MAX_RUNS:
                raise TooManyRuns
            starts = np.arange(p["count"], dtype=np.int64) * step
            return _merge(starts, np.full(len(starts), p["blocklength"] * ext, np.int64))
        origins = (np.arange(p["count"], dtype=np.int64)[:, None] * step
                   + np.arange(p["blocklength"], dtype=np.int64)[None, :] * ext)
    elif combiner in ("INDEXED", "HINDEXED", "INDEXED_BLOCK", "HINDEXED_BLOCK"):
        unit = ext if combiner.startswith("INDEXED") else 1
        displs = p["displacements"]
        counts = p["blocklengths"] if "blocklengths" in p else [p["blocklength"]] * len(displs)
        if dense:
            if len(displs) > MAX_RUNS:
                raise TooManyRuns
            return _merge(np.asarray(displs, np.int64) * unit, np.asarray(counts, np.int64) * ext)
        origins = np.concatenate(
            [np.zeros(0, np.int64)]
            + [d * unit + np.arange(n, dtype=np.int64) * ext for n, d in zip(counts, displs)])
    elif combiner == "SUBARRAY":
        sizes, subsizes, starts = p["sizes"], p["subsizes"], p["starts"]
        if p["order"] == MPI.ORDER_FORTRAN:
            sizes, subsizes, starts = sizes[::-1], subsizes[::-1], starts[::-1]
        # With a dense base the fastest dimension's slice is one run.
        inner = 1 if dense else 0
        if dense and elements // subsizes[-1] > MAX_RUNS:
            raise TooManyRuns
        origins = np.zeros(1, np.int64)
        for size, sub, start in zip(sizes[:len(sizes) - inner], subsizes, starts):
            origins = (origins[:, None] * size
                       + (start + np.arange(sub, dtype=np.int64))[None, :]).ravel()
        if dense:
            origins = origins * sizes[-1] + starts[-1]
            return _merge(origins * ext, np.full(len(origins), subsizes[-1] * ext, np.int64))
        origins = origins * ext
    else:
        return _probe(datatype)
    return _replicate(offsets, lengths, origins)


def _concat(parts):
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (np.concatenate([o for o, _ in parts]), np.concatenate([n for _, n in parts]))


def _probe(datatype):
    """Runs found by packing a buffer whose bytes spell their own position
    (one byte plane per Pack): the MPI library says where each packed byte
    came from.  For the constructors _runs does not unfold."""
    true_lb, true_extent = datatype.Get_true_extent()
    size = datatype.Get_size()
    if size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if true_extent > PROBE_LIMIT:
        raise BufferSpecError(
            f"a datatype spanning {true_extent} bytes is too large to flatten here")
    # Shift the type so that its lowest byte sits at the buffer's start,
    # and size it to that span: Pack then takes exactly one element.
    moved = datatype.Create_hindexed([1], [-true_lb])
    shifted = moved.Create_resized(0, true_extent).Commit()
    moved.Free()
    try:
        position = np.zeros(size, np.int64)
        index = np.arange(true_extent, dtype=np.int64)
        packed = np.empty(size, np.uint8)
        shift = 0
        while True:
            plane = ((index >> shift) & 0xFF).astype(np.uint8)
            shifted.Pack(plane, packed, 0, MPI.COMM_SELF)
            position |= packed.astype(np.int64) << shift
            shift += 8
            if not (true_extent - 1) >> shift:
                break
    finally:
        shifted.Free()
    position += true_lb
    starts = np.flatnonzero(np.concatenate(([True], position[1:] != position[:-1] + 1)))
    lengths = np.diff(np.concatenate((starts, [size])))
    return position[starts], lengths


def _basic(datatype):
    """(basic type, count per element) when every byte belongs to one
    predefined type, else (None, 0)."""
    if datatype.is_predefined:
        return datatype, 1
    base, combiner, p = datatype.decode()
    if combiner == "STRUCT":
        found, total = None, 0
        for n, t in zip(p["blocklengths"], p["datatypes"]):
            basic, each = _basic(t)
            if basic is None or (found is not None and basic != found):
                return None, 0
            if n and each:
                found = basic
            total += n * each
        return (found, total) if found is not None else (None, 0)
    basic, each = _basic(base)
    if basic is None:
        return None, 0
    if combiner in ("DUP", "RESIZED"):
        return basic, each
    size = datatype.Get_size()
    per = basic.Get_size()
    return (basic, size // per) if per and size % per == 0 else (None, 0)

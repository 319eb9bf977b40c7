"""Buffer specifications, parsed in one place.

Every buffer argument of the communicator (point-to-point and collectives)
goes through this module, which accepts exactly the forms mpi4py accepts:

    buf                                   a buffer: see below
    [buf, datatype]                       count inferred from the buffer size
    [buf, count, datatype]
    [buf, (count, displ), datatype]       displ in datatype extents
    (buf, count)                          datatype inferred from buf
    [buf, count, displ, datatype]

and for vector collectives (Scatterv, Gatherv, Allgatherv, Alltoallv):

    [buf, counts, displs, datatype]
    [buf, counts, datatype]               displs are the running sum of counts
    [buf, (counts, displs), datatype]
    buf / [buf, datatype]                 counts split the buffer as evenly as possible

A count or displacement may also be a single integer in the vector forms
(the same count for every block, or a stride between blocks), as in mpi4py.

A buffer is what mpi4py takes, tried in mpi4py's order: an object with the
buffer protocol (bytes, numpy arrays, ``MPI.buffer``...), then one exporting
DLPack (``__dlpack__`` and ``__dlpack_device__``), then one with
``__cuda_array_interface__`` (both read by ``ivmpi._interop``).  It must be
contiguous (C or Fortran order), and writable for receiving.

The datatype of a bare buffer comes from its format code (for DLPack and
the CUDA array interface, the one mpi4py derives from the dtype), looked up
in mpi4py's table; bytes of no known type are MPI.BYTE.  Datatypes may be
given as ``MPI.Datatype`` objects or as format strings.

Errors are mpi4py's types: a BufferSpecError (a ValueError and a
BufferError) for an unusable buffer or spec, a BufferTypeError (also a
TypeError) for an object that is no buffer or a count that is no integer, a
DatatypeKeyError (also a KeyError) for a name with no MPI datatype.

Derived datatypes: a committed derived type whose data fill its extent with
no holes (e.g. ``MPI.DOUBLE.Create_contiguous(4)``, or a vector whose stride
equals its block length) is a run of plain bytes and works everywhere.  A
type with holes (a strided vector, a resized type) is rejected with a
BufferSpecError: ivmpi moves contiguous bytes only and would otherwise
overwrite the holes of a receive buffer.  Predefined pair types used with
MAXLOC/MINLOC (``MPI.DOUBLE_INT`` ...) are moved as whole extents.

``MPI.BOTTOM`` (or ``None``) as the buffer of a list spec is accepted for
empty messages only, since ivmpi has no absolute addresses to send from.
"""
import operator

import numpy as np

from .datatypes import DatatypeError, layout
from .lib import MPI
from mpi4py.util import dtlib

from . import _interop
from .errors import BufferSpecError

IN_PLACE = MPI.IN_PLACE
BOTTOM = MPI.BOTTOM
PROC_NULL = MPI.PROC_NULL

_Datatype = MPI.Datatype
_TYPEDICT = MPI._typedict  # format code -> predefined MPI datatype (mpi4py's table)
_BYTE = MPI.BYTE


class BufferTypeError(BufferSpecError, TypeError):
    """Not a buffer, or not an integer where a count or displacement goes
    (mpi4py raises TypeError)."""


class DatatypeKeyError(BufferSpecError, KeyError):
    """No MPI datatype for a format code or type name (mpi4py raises KeyError)."""
    __str__ = BufferSpecError.__str__   # the message itself, not KeyError's repr of it


class Buf:
    """One parsed message buffer.

    mem       memoryview, format 'B', 1-D, C-contiguous: exactly the message
              bytes (count * extent, times the number of blocks when parsed
              with blocks > 1); writable when parsed for receiving
    count     number of datatype elements (per block when blocks > 1)
    datatype  the MPI.Datatype
    obj       the user's object (keeps the memory alive)
    nbytes    len(mem)
    unpack    None; for a receive with a derived datatype that has holes
              (parsed with holes=True), mem is a packed staging buffer and
              unpack() must be called once the message is in it
    pack      None; for such a send, a call that packs the user's data
              again (a persistent request's next start)
    """
    __slots__ = ("mem", "count", "datatype", "obj", "nbytes", "unpack", "pack")

    def __init__(self, mem, count, datatype, obj, unpack=None, pack=None):
        self.mem = mem
        self.count = count
        self.datatype = datatype
        self.obj = obj
        self.nbytes = len(mem)
        self.unpack = unpack
        self.pack = pack

    def __repr__(self):
        return (f"Buf(count={self.count}, datatype={_type_name(self.datatype)}, "
                f"nbytes={self.nbytes})")


class VBuf:
    """One parsed vector-collective buffer.

    mem       the whole buffer as bytes (memoryview, format 'B')
    counts    list of element counts, one per rank
    displs    list of displacements, in datatype extents, one per rank
    datatype  the MPI.Datatype
    extent    its extent in bytes
    obj       the user's object
    """
    __slots__ = ("mem", "counts", "displs", "datatype", "extent", "obj")

    def __init__(self, mem, counts, displs, datatype, extent, obj):
        self.mem = mem
        self.counts = counts
        self.displs = displs
        self.datatype = datatype
        self.extent = extent
        self.obj = obj

    def block(self, i):
        """The bytes of block i (a memoryview into the user's buffer)."""
        start = self.displs[i] * self.extent
        return self.mem[start:start + self.counts[i] * self.extent]

    def __repr__(self):
        return (f"VBuf(counts={self.counts}, displs={self.displs}, "
                f"datatype={_type_name(self.datatype)})")


# --- datatypes ---------------------------------------------------------------

# Predefined datatypes never change, so their facts are cached by handle.
_predefined_extent = {}
# format code -> (datatype, extent) for bare buffers; the hot path.
_format_cache = {}
# Byte-order prefixes of struct format codes.
_NATIVE_ORDER = ("@", "=", "<") if np.little_endian else ("@", "=", ">", "!")
_FOREIGN_ORDER = (">", "!") if np.little_endian else ("<",)


def _datatype_from_format(fmt):
    """(datatype, extent) for a format code; None is bytes of no known type."""
    entry = _format_cache.get(fmt)
    if entry is not None:
        return entry
    if fmt is None:
        datatype = _BYTE
    else:
        key = fmt
        if key[:1] in _NATIVE_ORDER:
            key = key[1:]
        elif key[:1] in _FOREIGN_ORDER:
            raise BufferSpecError(f"buffer format {fmt!r} has non-native byte order")
        datatype = _TYPEDICT.get(key)
        if datatype is None:
            raise DatatypeKeyError(
                f"cannot map buffer format {fmt!r} to an MPI datatype; "
                f"give the datatype explicitly, e.g. [buf, MPI.BYTE]")
    entry = (datatype, datatype.Get_extent()[1])
    _format_cache[fmt] = entry
    return entry


def _type_name(datatype):
    return datatype.Get_name() or "derived datatype"


def _as_datatype(obj):
    """An MPI.Datatype from a Datatype object or a format string."""
    if isinstance(obj, _Datatype):
        return obj
    if isinstance(obj, str):
        datatype = _TYPEDICT.get(obj)
        if datatype is None:
            raise DatatypeKeyError(f"cannot map {obj!r} to an MPI datatype")
        return datatype
    raise DatatypeKeyError(f"expected an MPI.Datatype, got {type(obj).__name__}")


def datatype_extent(datatype, holes_ok=False):
    """Extent in bytes of a datatype ivmpi can move as plain bytes.

    Raises BufferSpecError for the null datatype, uncommitted derived types,
    and (unless holes_ok) derived types with holes.
    """
    handle = datatype.handle
    extent = _predefined_extent.get(handle)
    if extent is not None:
        return extent
    if datatype == MPI.DATATYPE_NULL:
        raise DatatypeError("datatype is MPI.DATATYPE_NULL (freed, or never made)")
    if datatype.is_predefined:
        extent = datatype.Get_extent()[1]
        _predefined_extent[handle] = extent
        return extent
    # Derived type: not cached, since a freed handle can be reused by a new type.
    name = _type_name(datatype)
    try:
        # Packing zero bytes is how MPI itself notices an uncommitted type.
        datatype.Pack(b"", bytearray(0), 0, MPI.COMM_SELF)
    except MPI.Exception:
        raise DatatypeError(f"datatype {name} is not committed (call .Commit() first)") from None
    if holes_ok:
        extent = datatype.Get_extent()[1]
        if extent <= 0:
            raise BufferSpecError(f"datatype {name} has extent {extent}: it cannot lay "
                                  f"out a message in a buffer")
        return extent
    if has_holes(datatype):
        lb, extent = datatype.Get_extent()
        true_lb, true_extent = datatype.Get_true_extent()
        size = datatype.Get_size()
        raise BufferSpecError(
            f"datatype {name} is not contiguous (size {size}, lb {lb}, extent "
            f"{extent}, true extent {true_extent}); ivmpi moves contiguous "
            f"datatypes only here - pack the data into a contiguous buffer first")
    return datatype.Get_extent()[1]


def has_holes(datatype):
    """True for a derived datatype whose data do not fill its extent as one run."""
    if datatype.is_predefined:
        return False
    lb, extent = datatype.Get_extent()
    true_lb, true_extent = datatype.Get_true_extent()
    return not (lb == 0 and true_lb == 0 and datatype.Get_size() == extent == true_extent)


def fast_plan(datatype):
    """(RunPlan, extent) of a derived datatype with holes, for the fast
    paths to gather and scatter its elements straight between the user's
    memory and the ring; (None, extent) of a committed derived datatype
    whose data fill its extent, which they move as plain bytes, as a
    predefined type; None for any other type (they leave it to the
    general path, which also reports what is wrong with a bad one)."""
    if not isinstance(datatype, MPI.Datatype) or datatype.is_predefined:
        return None
    if not has_holes(datatype):
        try:
            extent = datatype_extent(datatype)      # checks that it is committed
        except BufferSpecError:
            return None
        return (None, extent) if extent > 0 else None
    lay = layout(datatype)
    if lay.plan is None or lay.extent <= 0:
        return None
    return lay.plan, lay.extent


def _packed(buf, mem, origin, writable, blocks=1, fill=False, lay=None, now=True):
    """A Buf whose mem is the packed form of buf's data (a Buf over the
    user's memory, with a derived datatype with holes; its first element's
    origin at byte `origin` of mem, the user's whole buffer): for a send,
    packed now (and again by pack(), for persistent requests); for a
    receive, a staging buffer that unpack() scatters into the user's memory
    (filled with the user's data first when `fill`: a buffer read and written).
    Packed, the data are plain elements of the type's one basic type (or
    bytes, for a struct of several), so reductions see numbers.  now=False
    leaves the first packing to the caller (pack(), at each start)."""
    datatype, count = buf.datatype, buf.count
    if lay is None:
        lay = layout(datatype)
    total = count * blocks
    lay.check(total, len(mem), origin)
    staging = memoryview(bytearray(lay.size * total))
    basic, per = (lay.basic, lay.nbasic) if lay.basic is not None else (_BYTE, lay.size)
    def pack():
        lay.gather(mem, origin, total, staging)
    if not writable:
        if now:
            pack()
        return Buf(staging, count * per, basic, buf.obj, pack=pack)

    def unpack(nbytes=None):
        # A shorter message fills only its own elements (MPI leaves the
        # rest of the receive buffer as it was): nbytes is what arrived.
        if nbytes is None or nbytes >= lay.size * total:
            lay.scatter(staging, mem, origin, total)
            return
        whole, rest = divmod(nbytes, lay.size)
        lay.scatter(staging[:whole * lay.size], mem, origin, whole)
        if rest:
            # Part of one more element: its other bytes keep their values.
            at = origin + whole * lay.extent
            element = bytearray(lay.size)
            lay.gather(mem, at, 1, element)
            element[:rest] = staging[whole * lay.size:nbytes]
            lay.scatter(element, mem, at, 1)
    if fill and now:
        pack()
    return Buf(staging, count * per, basic, buf.obj, unpack, pack if fill else None)


def packed_spec(spec, writable, blocks=1, fill=False):
    """(spec, finish) for a blocking collective's buffer spec: a spec whose
    datatype has holes becomes [staging, count, basic type] over a packed
    copy (gathered now for a send, or for a receive buffer the call also
    reads: fill=True), and finish() scatters a received staging buffer back
    into the user's memory; any other spec comes back as it is, finish None."""
    spec, pack, unpack = packed_simple(spec, writable, blocks, fill)
    if pack is not None:
        pack()
    return spec, unpack


def packed_vspec(spec, size, writable, fill=False):
    """packed_spec for a vector collective's [buf, counts, displs, type]."""
    spec, pack, unpack = packed_vector(spec, size, writable, fill)
    if pack is not None:
        pack()
    return spec, unpack


def packed_simple(spec, writable, blocks=1, fill=False):
    """(spec, pack, unpack) of a buffer spec whose datatype may have holes:
    a spec over a staging buffer of its basic elements, a call that gathers
    the user's data into it (None when it is only received into) and one
    that scatters it back (None for a send); a spec without holes comes
    back as it is, with None, None.  Nonblocking collectives call pack at
    each start and unpack at each completion."""
    if type(spec) is not list and type(spec) is not tuple:
        return spec, None, None
    buf, count, displ, datatype = _split_simple(spec)
    if datatype is None or buf is None or buf is BOTTOM:
        return spec, None, None
    datatype = _as_datatype(datatype)
    if not has_holes(datatype):
        return spec, None, None
    parsed = _packed_holes(buf, count, displ, datatype, writable, blocks, fill, now=False)
    return [parsed.mem, parsed.count, parsed.datatype], parsed.pack, parsed.unpack


def packed_vector(spec, size, writable, fill=False):
    """packed_simple for a vector collective's [buf, counts, displs, type]."""
    if type(spec) is not list and type(spec) is not tuple:
        return spec, None, None
    # Only the datatype is looked at here: the collective parses any other
    # spec itself, once.
    datatype = _split_vector(spec)[3]
    if datatype is None or not has_holes(_as_datatype(datatype)):
        return spec, None, None
    vbuf = parse_vbuf(spec, size, writable, holes_ok=True)
    lay = layout(vbuf.datatype)
    basic, per = (lay.basic, lay.nbasic) if lay.basic is not None else (_BYTE, lay.size)
    starts, running = [], 0
    for c in vbuf.counts:
        starts.append(running)
        running += c
    staging = memoryview(bytearray(lay.size * running))
    mem = vbuf.mem
    pieces = [(staging[starts[i] * lay.size:(starts[i] + vbuf.counts[i]) * lay.size],
               vbuf.displs[i] * vbuf.extent, vbuf.counts[i]) for i in range(size)]

    def pack():
        for piece, origin, count in pieces:
            lay.gather(mem, origin, count, piece)

    def unpack():
        for piece, origin, count in pieces:
            lay.scatter(piece, mem, origin, count)
    return ([staging, ([c * per for c in vbuf.counts], [d * per for d in starts]), basic],
            pack if not writable or fill else None, unpack if writable else None)


def _packed_holes(buf, count, displ, datatype, writable, blocks, fill, now=True):
    """_packed for the parts of a spec whose datatype has holes."""
    lay = layout(datatype)                  # checks that the type is committed
    extent = lay.extent
    if extent <= 0:
        raise BufferSpecError(f"datatype {_type_name(datatype)} has extent {extent}: it "
                              f"cannot lay out a message in a buffer")
    mem, _ = _memory(buf, writable, False)
    origin = _index(displ, "displacement") * extent if displ is not None else 0
    if count is None:
        elements = max(0, len(mem) - origin) // extent
        if elements % blocks:
            raise BufferSpecError(f"cannot infer count: {elements} elements do not split "
                                  f"into {blocks} equal blocks")
        count = elements // blocks
    return _packed(Buf(mem, _index(count, "count"), datatype, buf), mem, origin, writable,
                   blocks, fill, lay, now)


_numpy_dtypes = {}


def numpy_dtype(datatype):
    """The numpy dtype matching an MPI datatype (cached for predefined ones)."""
    handle = datatype.handle
    dtype = _numpy_dtypes.get(handle)
    if dtype is None:
        try:
            dtype = dtlib.to_numpy_dtype(datatype)
        except (ValueError, TypeError) as exc:
            raise BufferSpecError(
                f"datatype {_type_name(datatype)} has no numpy equivalent: {exc}") from None
        if datatype.is_predefined:
            _numpy_dtypes[handle] = dtype
    return dtype


def typed_view(mem, datatype):
    """A numpy view of the bytes ``mem`` as elements of ``datatype``."""
    return np.frombuffer(mem, dtype=numpy_dtype(datatype))


# --- memory ------------------------------------------------------------------

def _memory(obj, writable, typed):
    """(flat byte memoryview, format code) of a buffer, in mpi4py's order:
    the buffer protocol, then DLPack, then the CUDA array interface.
    ``typed``: the format will name the datatype."""
    try:
        mem = memoryview(obj)
    except TypeError:
        mem = None
    if mem is None:
        found = (_interop.dlpack_memory(obj, writable)
                 or _interop.cai_memory(obj, writable, typed))
        if found is None:
            raise BufferTypeError(
                f"message buffer must support the buffer protocol, "
                f"got {type(obj).__name__}")
        return found
    if writable and mem.readonly:
        raise BufferSpecError(
            f"receive buffer ({type(obj).__name__}) is read-only")
    fmt = mem.format
    if not mem.c_contiguous:
        if not mem.f_contiguous:
            raise BufferSpecError(
                f"message buffer ({type(obj).__name__} of shape {mem.shape}) "
                f"is not contiguous")
        # Fortran order: the transpose is the same bytes in C order.
        array = obj if isinstance(obj, np.ndarray) else np.asarray(mem)
        mem = memoryview(array.T)
    return _flat(mem), fmt


def _typed_memory(buf, writable, datatype, holes_ok=False):
    """(flat byte view, datatype, extent) of a buffer; the datatype comes from
    the buffer's format when none is given."""
    mem, fmt = _memory(buf, writable, datatype is None)
    if datatype is None:
        datatype, extent = _datatype_from_format(fmt)
    else:
        extent = datatype_extent(datatype, holes_ok)
    return mem, datatype, extent


def _flat(mem):
    if mem.format == "B" and mem.ndim == 1:
        return mem
    return mem.cast("B")


def _index(value, what):
    try:
        value = operator.index(value)
    except TypeError:
        raise BufferTypeError(
            f"{what} must be an integer, got {type(value).__name__}") from None
    if value < 0:
        raise BufferSpecError(f"negative {what} {value}")
    return value


def _is_integral(value):
    """One count for all blocks rather than a sequence of them: mpi4py's
    test, which takes a 0-d numpy array for a number."""
    try:
        len(value)
    except TypeError:
        return hasattr(type(value), "__index__")
    return False


# --- simple (one block) specs ------------------------------------------------

def _split_simple(spec):
    """(buf, count, displ, datatype) of a simple spec, mpi4py's rules."""
    if not isinstance(spec, (list, tuple)):
        return spec, None, None, None
    n = len(spec)
    count = displ = datatype = None
    if n == 2:
        buf, count = spec
        if isinstance(count, (_Datatype, str)):
            count, datatype = None, count
        elif isinstance(count, (list, tuple)):
            count, displ = _pair(count)
    elif n == 3:
        buf, count, datatype = spec
        if isinstance(count, (list, tuple)):
            count, displ = _pair(count)
    elif n == 4:
        buf, count, displ, datatype = spec
    else:
        raise BufferSpecError(
            f"message spec must have 2 to 4 items, got {n}")
    return buf, count, displ, datatype


def _pair(value):
    if len(value) != 2:
        raise BufferSpecError(
            f"expected (count, displ), got a sequence of {len(value)} items")
    return value[0], value[1]


_BARE_TYPES = frozenset((np.ndarray, bytes, bytearray, memoryview))


def _parse(spec, writable, blocks, holes=False, fill=False):
    if spec is None or spec is IN_PLACE:
        raise BufferTypeError(
            f"expected a buffer or [buffer, ...] spec, got {spec!r}")
    buf, count, displ, datatype = _split_simple(spec)
    if datatype is not None:
        datatype = _as_datatype(datatype)
    if buf is None or buf is BOTTOM:
        return _bottom(count, datatype)
    if holes and datatype is not None and has_holes(datatype):
        return _packed_holes(buf, count, displ, datatype, writable, blocks, fill)
    mem, datatype, extent = _typed_memory(buf, writable, datatype)
    return _finish(buf, mem, count, displ, datatype, extent, blocks, len(mem))


def _finish(obj, mem, count, displ, datatype, extent, blocks, length):
    offset = 0
    if displ is not None:
        displ = _index(displ, "displacement")
        offset = displ * extent
        if offset > length:
            raise BufferSpecError(
                f"displacement {displ} out of bounds: the buffer holds "
                f"{length // extent if extent else 0} elements of "
                f"{_type_name(datatype)}")
        length -= offset
    if count is None:
        if extent <= 0:
            raise BufferSpecError(
                f"cannot infer count: datatype {_type_name(datatype)} has extent {extent}")
        if length % extent:
            raise BufferSpecError(
                f"cannot infer count: buffer length {length} is not a multiple "
                f"of the extent {extent} of {_type_name(datatype)}")
        elements = length // extent
        if elements % blocks:
            raise BufferSpecError(
                f"cannot infer count: {elements} elements do not split into "
                f"{blocks} equal blocks")
        count = elements // blocks
    else:
        count = _index(count, "count")
        if count * extent * blocks > length:
            raise BufferSpecError(
                f"count {count}" + (f" x {blocks} blocks" if blocks > 1 else "")
                + f" of {_type_name(datatype)} needs {count * extent * blocks} "
                f"bytes but the buffer has {length}")
    end = offset + count * extent * blocks
    if offset or end != len(mem):
        mem = mem[offset:end]
    return Buf(mem, count, datatype, obj)


_EMPTY = memoryview(bytearray(0))


def _bottom(count, datatype):
    if datatype is None:
        raise BufferSpecError("MPI.BOTTOM or None as buffer needs an explicit datatype")
    count = 0 if count is None else _index(count, "count")
    if count:
        raise BufferSpecError(
            f"MPI.BOTTOM (absolute addresses) is not supported with count {count}; "
            f"pass the buffer itself")
    return Buf(_EMPTY, 0, datatype, None)


def parse_send(spec, blocks=1, rank=None, holes=False):
    """Parse a send buffer spec (read-only buffers are fine).

    With blocks > 1 (Scatter, Alltoall...) the buffer holds ``blocks`` equal
    blocks and ``count`` is the per-block count, as in mpi4py.  ``rank`` is
    the peer, if any: for MPI.PROC_NULL the spec is not looked at, as mpi4py
    ignores it, and the message is empty.  ``holes=True``: a derived datatype
    with holes is packed (see _packed) instead of refused.
    """
    if rank == PROC_NULL:
        return Buf(_EMPTY, 0, _BYTE, None)
    # Fast path (point-to-point hot path): a bare 1-D contiguous byte buffer
    # or a C-contiguous numpy array of a basic dtype.
    if type(spec) in _BARE_TYPES and blocks == 1:
        mem = memoryview(spec)
        if mem.c_contiguous:
            entry = _format_cache.get(mem.format)
            if entry is not None:
                if mem.ndim != 1 or mem.format != "B":
                    mem = mem.cast("B")
                return Buf(mem, len(mem) // entry[1], entry[0], spec)
    return _parse(spec, False, blocks, holes)


def parse_recv(spec, blocks=1, rank=None, holes=False, fill=False):
    """Parse a receive buffer spec; the buffer must be writable.  ``rank``
    as for parse_send; with ``holes=True`` the caller calls the result's
    unpack() when it is not None, once the message has arrived (``fill``:
    the packed staging buffer starts with the user's data, for a buffer
    that is also sent from)."""
    if rank == PROC_NULL:
        return Buf(_EMPTY, 0, _BYTE, None)
    if type(spec) in _BARE_TYPES and blocks == 1:
        mem = memoryview(spec)
        if mem.c_contiguous and not mem.readonly:
            entry = _format_cache.get(mem.format)
            if entry is not None:
                if mem.ndim != 1 or mem.format != "B":
                    mem = mem.cast("B")
                return Buf(mem, len(mem) // entry[1], entry[0], spec)
    return _parse(spec, True, blocks, holes, fill)


def is_in_place(spec):
    """True for MPI.IN_PLACE (and None, which mpi4py reads as IN_PLACE)."""
    return spec is IN_PLACE or spec is None


# --- vector specs ------------------------------------------------------------

def _split_vector(spec):
    """(buf, counts, displs, datatype) of a vector spec, mpi4py's rules."""
    buf, counts, displs, datatype = spec, None, None, None
    if isinstance(spec, (list, tuple)):
        n = len(spec)
        if n == 2:
            buf, counts = spec
            if isinstance(counts, (_Datatype, str)):
                counts, datatype = None, counts
            elif isinstance(counts, tuple):  # mpi4py: a tuple is (counts, displs)
                counts, displs = _pair(counts)
        elif n == 3:
            buf, counts, datatype = spec
            if isinstance(counts, tuple):
                counts, displs = _pair(counts)
        elif n == 4:
            buf, counts, displs, datatype = spec
        else:
            raise BufferSpecError(f"message spec must have 2 to 4 items, got {n}")
    return buf, counts, displs, datatype


def parse_vbuf(spec, size, recv, holes_ok=False):
    """Parse a vector-collective spec for a communicator of ``size`` ranks
    (``holes_ok``: a derived datatype with holes is taken; the caller packs
    it, see packed_vspec)."""
    if spec is None or spec is IN_PLACE:
        raise BufferTypeError(
            f"expected a buffer or [buffer, counts, displs, datatype], got {spec!r}")
    buf, counts, displs, datatype = _split_vector(spec)
    if datatype is not None:
        datatype = _as_datatype(datatype)
    if buf is None or buf is BOTTOM:
        if datatype is None:
            raise BufferSpecError("MPI.BOTTOM or None as buffer needs an explicit datatype")
        mem = _EMPTY
        extent = datatype_extent(datatype)
    else:
        mem, datatype, extent = _typed_memory(buf, recv, datatype, holes_ok)
    total = len(mem) // extent if extent > 0 else 0

    if counts is None:
        if extent <= 0 or len(mem) % extent:
            raise BufferSpecError(
                f"cannot infer counts: buffer length {len(mem)} is not a multiple "
                f"of the extent {extent} of {_type_name(datatype)}")
        q, r = divmod(total, size)
        counts = [q + (i < r) for i in range(size)]
    elif _is_integral(counts):
        counts = [_index(counts, "count")] * size
    else:
        counts = [_index(c, "count") for c in counts]
    if len(counts) != size:
        raise BufferSpecError(
            f"expected {size} counts (one per rank), got {len(counts)}")

    if displs is None:
        displs, running = [], 0
        for c in counts:
            displs.append(running)
            running += c
    elif _is_integral(displs):
        stride = _index(displs, "displacement")
        displs = [stride * i for i in range(size)]
    else:
        displs = [_index(d, "displacement") for d in displs]
    if len(displs) != size:
        raise BufferSpecError(
            f"expected {size} displacements (one per rank), got {len(displs)}")

    if holes_ok and has_holes(datatype):
        lay = layout(datatype)
        for i in range(size):
            lay.check(counts[i], len(mem), displs[i] * extent)
        return VBuf(mem, counts, displs, datatype, extent, buf)
    for i in range(size):
        if counts[i] and displs[i] + counts[i] > total:
            raise BufferSpecError(
                f"block {i} (displacement {displs[i]}, count {counts[i]}) runs past "
                f"the end of the buffer ({total} elements of {_type_name(datatype)})")
    return VBuf(mem, counts, displs, datatype, extent, buf)

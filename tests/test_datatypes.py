"""Flattened datatypes: gathering and scattering through ivmpi.datatypes
gives exactly the bytes of the MPI library's Pack and Unpack, for every
constructor, nested, with negative lower bounds and padding."""
import numpy as np
import pytest
from mpi4py import MPI

from ivmpi import datatypes
from ivmpi.errors import BufferSpecError


def _types():
    d = MPI.DOUBLE
    vector = d.Create_vector(4, 2, 5).Commit()
    shifted = vector.Create_resized(-8, 24).Commit()
    return {
        "contiguous": MPI.INT.Create_contiguous(3).Commit(),
        "vector": vector,
        "hvector": MPI.INT.Create_hvector(3, 2, 20).Commit(),
        "indexed": MPI.INT.Create_indexed([2, 1, 3], [5, 0, 9]).Commit(),
        "hindexed": MPI.SHORT.Create_hindexed([1, 2], [10, 2]).Commit(),
        "indexed_block": MPI.INT.Create_indexed_block(2, [1, 5, 3]).Commit(),
        "hindexed_block": MPI.INT.Create_hindexed_block(2, [4, 24]).Commit(),
        "subarray C": d.Create_subarray([4, 5, 6], [2, 3, 2], [1, 2, 3]).Commit(),
        "subarray Fortran": d.Create_subarray([4, 5, 6], [2, 3, 2], [1, 2, 3],
                                              order=MPI.ORDER_FORTRAN).Commit(),
        "resized, negative lb": shifted,
        "struct": MPI.Datatype.Create_struct([1, 2, 1], [0, 8, 40],
                                             [MPI.INT, shifted, MPI.SHORT]).Commit(),
        "dup": vector.Dup().Commit(),
        "contiguous of vectors": vector.Create_contiguous(3).Commit(),
        "darray": d.Create_darray(4, 1, [8, 6], [MPI.DISTRIBUTE_BLOCK, MPI.DISTRIBUTE_CYCLIC],
                                  [MPI.DISTRIBUTE_DFLT_DARG, 2], [2, 2]).Commit(),
        "padded pair": MPI.SHORT_INT,
        "vector of padded pairs": MPI.SHORT_INT.Create_vector(3, 1, 2).Commit(),
    }


TYPES = _types()


@pytest.mark.parametrize("name", list(TYPES))
@pytest.mark.parametrize("count", [0, 1, 3])
def test_gather_and_scatter_match_pack_and_unpack(name, count):
    datatype = TYPES[name]
    layout = datatypes.layout(datatype)
    assert layout.size == datatype.Get_size()
    extent = datatype.Get_extent()[1]
    true_lb, true_extent = datatype.Get_true_extent()
    origin = 16 + max(0, -true_lb) + max(0, -(count - 1) * extent)
    nbytes = origin + max(1, count) * max(abs(extent), true_extent) + abs(true_lb) + 64
    user = np.random.default_rng(count).integers(0, 256, nbytes, dtype=np.uint8)
    ours = bytearray(layout.size * count)
    layout.gather(user, origin, count, ours)
    # The library's reference: the same elements placed at `origin` of the buffer.
    placed = MPI.Datatype.Create_struct([count], [origin], [datatype])
    whole = placed.Create_resized(0, nbytes).Commit()
    theirs = bytearray(layout.size * count)
    if count:
        whole.Pack(user, theirs, 0, MPI.COMM_SELF)
    assert ours == theirs
    back, expected = bytearray(nbytes), bytearray(nbytes)
    layout.scatter(ours, back, origin, count)
    if count:
        whole.Unpack(theirs, 0, expected, MPI.COMM_SELF)
    assert back == expected
    placed.Free()
    whole.Free()


def test_basic_type_of_homogeneous_types():
    assert datatypes.layout(TYPES["vector"]).basic == MPI.DOUBLE
    assert datatypes.layout(TYPES["vector"]).nbasic == 8
    assert datatypes.layout(TYPES["struct"]).basic is None


def test_out_of_bounds_is_refused_before_any_copy():
    layout = datatypes.layout(TYPES["vector"])
    user = np.zeros(16, np.uint8)
    with pytest.raises(BufferSpecError, match="reach"):
        layout.gather(user, 0, 1, bytearray(layout.size))
    with pytest.raises(BufferSpecError, match="packed buffer"):
        layout.gather(np.zeros(4096, np.uint8), 0, 1, bytearray(layout.size - 1))


def test_a_freed_handle_reused_by_a_new_type_is_flattened_afresh():
    """The flattened form lives in an attribute of the datatype: freeing
    the type drops it, so a new type on the same handle is not mistaken
    for the old one."""
    for stride in range(2, 40):
        t = MPI.INT.Create_indexed([1, 1], [0, stride]).Commit()
        layout = datatypes.layout(t)
        assert list(layout.offsets) == [0, 4 * stride], stride
        t.Free()


def test_types_with_too_many_runs_are_moved_by_the_library(monkeypatch):
    """Past MAX_RUNS the run table would cost more than it saves: the
    library's Pack and Unpack move the bytes instead, with the same result."""
    monkeypatch.setattr(datatypes, "MAX_RUNS", 4)
    t = MPI.DOUBLE.Create_vector(10, 1, 2).Commit()
    layout = datatypes.layout(t)
    assert layout.offsets is None
    user = np.arange(40.0)
    packed = bytearray(layout.size * 2)
    layout.gather(user, 8, 2, packed)
    assert np.array_equal(np.frombuffer(packed), np.concatenate([user[1:20:2], user[20:39:2]]))
    back = np.zeros(40)
    layout.scatter(packed, back, 8, 2)
    touched = np.r_[1:20:2, 20:39:2]
    assert np.array_equal(back[touched], user[touched])
    assert not np.delete(back, touched).any()
    t.Free()


def test_uncommitted_types_are_refused():
    t = MPI.DOUBLE.Create_vector(2, 1, 2)
    with pytest.raises(BufferSpecError, match="not committed"):
        datatypes.layout(t)
    t.Free()


def _reference_gather(user, origin, count, extent, offsets, lengths):
    """The packed bytes, picked one run at a time in Python."""
    out = bytearray()
    for e in range(count):
        for o, n in zip(offsets, lengths):
            at = origin + e * extent + o
            out += user[at:at + n]
    return bytes(out)


@pytest.mark.parametrize("offsets, lengths, shape", [
    ([0, 8192, 16384, 24576], [8] * 4, (4, 8192, 1, 0)),                  # a column
    ([0, 24, 1024, 1048], [8] * 4, (2, 24, 2, 1024)),                     # a face-like 2x2
    ([16, 48, 80], [4] * 3, (3, 32, 1, 0)),                                # offset start
    ([40, 24, 8], [8] * 3, (3, -16, 1, 0)),                                # descending runs
    ([5], [3], (1, 0, 1, 0)),                                              # one run
    ([0, 8, 40], [8] * 3, None),                                           # uneven gaps
    ([0, 16], [8, 4], None),                                               # unequal lengths
    ([0, 8, 100, 108, 200], [4] * 5, None),                                # rows of unequal size
])
def test_run_plans_find_regular_tables_and_copy_as_the_table_says(offsets, lengths, shape):
    plan = datatypes.RunPlan(np.array(offsets, np.int64), np.array(lengths, np.int64))
    if shape is None:
        assert not plan.regular
    else:
        assert plan.regular and (plan.n1, plan.s1, plan.n2, plan.s2) == shape
    assert (plan.low, plan.high) == (min(offsets), max(o + n for o, n in zip(offsets, lengths)))
    extent = plan.high + 8
    count = 3
    user = np.random.default_rng(1).integers(0, 256, 64 + count * extent + 40000, np.uint8)
    packed = bytearray(plan.size * count)
    plan.gather(user, 64, count, extent, packed)
    assert bytes(packed) == _reference_gather(user.tobytes(), 64, count, extent, offsets, lengths)
    target = np.zeros_like(user)
    plan.scatter(packed, target, 64, count, extent)
    expected = np.zeros_like(user)
    for e in range(count):
        for o, n in zip(offsets, lengths):
            at = 64 + e * extent + o
            expected[at:at + n] = user[at:at + n]
    assert (target == expected).all()


def test_run_plans_check_every_copy_against_the_buffer():
    plan = datatypes.RunPlan(np.array([0, 100], np.int64), np.array([8, 8], np.int64))
    user = bytearray(300)
    plan.gather(user, 0, 2, 150, bytearray(32))                      # bytes 0..258: fits
    with pytest.raises(BufferSpecError, match="reaches bytes"):
        plan.gather(user, 50, 2, 150, bytearray(32))                 # ends at byte 308
    with pytest.raises(BufferSpecError, match="reaches bytes"):
        plan.scatter(bytearray(16), user, -1, 1, 0)
    with pytest.raises(BufferSpecError, match="packed buffer holds"):
        plan.gather(user, 0, 2, 150, bytearray(31))
    with pytest.raises(BufferSpecError, match="negative"):
        datatypes.RunPlan(np.array([0], np.int64), np.array([-1], np.int64))

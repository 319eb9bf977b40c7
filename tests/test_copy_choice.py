"""Whether one copy from a sender's memory pays under the eager limit: the
kernel's copy (process_vm_readv) costs from a fraction of a microsecond to
several depending on the machine, so start-up times it against the rings'
copy (ivmpi.world._one_copy_pays) instead of assuming."""
import pytest

from ivmpi import _fastcopy, world


def test_timing_times_both_copies():
    kernel, copy = _fastcopy.single_copy_timing(65536, 4)
    assert copy > 0
    # (A kernel without process_vm_readv gives None; this one has it.)
    assert kernel is not None and kernel > 0


@pytest.mark.parametrize("nbytes, reps", [(0, 4), (-1, 4), (4096, 0)])
def test_timing_refuses_nothing_to_time(nbytes, reps):
    with pytest.raises(ValueError):
        _fastcopy.single_copy_timing(nbytes, reps)


@pytest.mark.parametrize("kernel, copy, pays", [
    (1e-6, 1e-6, True),         # one copy as fast as one of the ring's two
    (1.9e-6, 1e-6, True),
    (2e-6, 1e-6, False),        # as slow as both of them
    (10e-6, 2e-6, False),       # 64 KiB under a hypervisor whose calls cost microseconds
    (None, 1e-6, False),        # the kernel refused
])
def test_one_copy_pays_only_when_quicker_than_two(monkeypatch, kernel, copy, pays):
    asked = []
    monkeypatch.setattr(_fastcopy, "single_copy_timing",
                        lambda nbytes: (asked.append(nbytes), (kernel, copy))[1])
    assert world._one_copy_pays(65536) is pays
    assert asked == [65536]

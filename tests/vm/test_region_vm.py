"""A guest finds the ivshmem device and shares bytes with the host, exactly.

One guest boot covers every step (guest_region.py): Region.open("pci") with
strict alignment, a plain mmap of resource2, Region.open("devmem:ADDR:SIZE")
at BAR2's physical address, and a live echo with the host while both run.
"""
import random
import sys
import time

from ivmpi import Region, vm

from vmhelpers import GUEST_TIMEOUT, describe, guest_script
from vmregion import (A_LEN, A_OFF, B_LEN, B_OFF, C_LEN, C_OFF, ECHO_ROUNDS, GUEST_FLAG,
                      HOST_FLAG, PAYLOAD_OFF, REPLY_OFF, SIZE, echo_length, pattern)


def host_echo(region, seed, guest, deadline):
    """Publish each payload and wait for the guest's copy; return the copies."""
    mem = region.mem
    replies = []
    for round_no in range(1, ECHO_ROUNDS + 1):
        mem.write(PAYLOAD_OFF, pattern(seed + round_no, echo_length(round_no)))
        mem.store_release(HOST_FLAG, round_no)
        while mem.load_acquire(GUEST_FLAG) != round_no:
            if guest.poll() is not None or time.monotonic() > deadline:
                return replies
            time.sleep(0.0005)
        replies.append(mem.read_bytes(REPLY_OFF, echo_length(round_no)))
    return replies


def test_guest_reads_and_writes_the_region_byte_exact(vm_ready, shm_path):
    seed = random.randrange(1 << 30)
    with Region.create(shm_path, SIZE) as region:
        region.write(A_OFF, pattern(seed, A_LEN))
        guests = vm.start_guests(
            [[sys.executable, guest_script("guest_region.py"), str(SIZE), str(seed)]],
            shm=shm_path, size=SIZE)
        try:
            replies = host_echo(region, seed, guests[0], time.monotonic() + GUEST_TIMEOUT)
            results = vm.wait_guests(guests, GUEST_TIMEOUT)
        finally:
            guests[0].kill()
        out = results[0].output
        assert results[0].returncode == 0, describe(results)
        for marker in ("PCI-OPEN-OK", "PCI-READ-OK", "PCI-WRITE-DONE", "ECHO-OK",
                       "RAW-READ-OK", "DEVMEM-OK"):
            assert marker in out, f"{marker} missing\n{describe(results)}"
        # What the guest wrote, through either mapping, is on the host byte for byte.
        assert region.read_bytes(B_OFF, B_LEN) == pattern(seed + 1000, B_LEN)
        assert region.read_bytes(C_OFF, C_LEN) == pattern(seed + 2000, C_LEN)
        assert replies == [pattern(seed + i, echo_length(i)) for i in range(1, ECHO_ROUNDS + 1)]
        # Nothing outside the written ranges was touched.
        assert region.read_bytes(B_OFF + B_LEN, 4096) == bytes(4096)
        assert region.read_bytes(C_OFF - 5, 5) == bytes(5)

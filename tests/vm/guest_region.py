"""Runs inside a guest: check the ivshmem region against what the host wrote.

Usage: guest_region.py SIZE SEED
Prints one marker per passed step; the first failed check raises (exit 1).
The layout of the offsets is shared with test_region_vm.py through vmregion.
"""
import mmap
import os
import sys
import time

from ivmpi import Region

from vmregion import (A_LEN, A_OFF, B_LEN, B_OFF, C_LEN, C_OFF, ECHO_ROUNDS, GUEST_FLAG,
                      HOST_FLAG, PAYLOAD_OFF, REPLY_OFF, echo_length, pattern)


def bar2_physical_address(pci_address):
    with open(f"/sys/bus/pci/devices/{pci_address}/resource") as f:
        return int(f.read().splitlines()[2].split()[0], 16)


def expect(what, got, want):
    if got != want:
        first = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w),
                     min(len(got), len(want)))
        raise SystemExit(f"{what}: differs from the host's data at byte {first} "
                         f"(got {len(got)} bytes, expected {len(want)})")


def echo(region, seed, deadline=60.0):
    """Copy each payload the host publishes back to it, byte for byte."""
    mem = region.mem
    for round_no in range(1, ECHO_ROUNDS + 1):
        end = time.monotonic() + deadline
        while mem.load_acquire(HOST_FLAG) != round_no:
            if time.monotonic() > end:
                raise SystemExit(f"echo round {round_no}: host flag never arrived "
                                 f"(flag={mem.load_acquire(HOST_FLAG)})")
        n = echo_length(round_no)
        data = mem.read_bytes(PAYLOAD_OFF, n)
        expect(f"echo round {round_no} payload", data, pattern(seed + round_no, n))
        mem.write(REPLY_OFF, data)
        mem.store_release(GUEST_FLAG, round_no)


def main():
    size, seed = int(sys.argv[1]), int(sys.argv[2])

    with Region.open("pci") as region:
        assert region.backend == "pci", region.backend
        assert region.strict_align, "strict alignment must be on for a PCI BAR mapping"
        assert region.size == size, (region.size, size)
        print(f"PCI-OPEN-OK {region.pci_address} ivposition={region.ivposition}", flush=True)
        expect("pci read", region.read_bytes(A_OFF, A_LEN), pattern(seed, A_LEN))
        print("PCI-READ-OK", flush=True)
        region.write(B_OFF, pattern(seed + 1000, B_LEN))
        print("PCI-WRITE-DONE", flush=True)
        echo(region, seed)
        print("ECHO-OK", flush=True)
        pci_address = region.pci_address

    # An independent look through a plain mmap of resource2, not Region's code.
    path = f"/sys/bus/pci/devices/{pci_address}/resource2"
    fd = os.open(path, os.O_RDWR | os.O_SYNC)
    try:
        raw = mmap.mmap(fd, size, mmap.MAP_SHARED)
        expect("raw resource2 read", raw[A_OFF:A_OFF + A_LEN], pattern(seed, A_LEN))
        raw.close()
    finally:
        os.close(fd)
    print("RAW-READ-OK", flush=True)

    address = bar2_physical_address(pci_address)
    with Region.open(f"devmem:{address:#x}:{size}") as region:
        assert region.backend == "devmem", region.backend
        assert region.strict_align
        expect("devmem read", region.read_bytes(A_OFF, A_LEN), pattern(seed, A_LEN))
        region.write(C_OFF, pattern(seed + 2000, C_LEN))
    print(f"DEVMEM-OK {address:#x}", flush=True)


if __name__ == "__main__":
    main()

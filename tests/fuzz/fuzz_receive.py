"""Coverage-guided fuzzing of the receive path with atheris (libFuzzer).

The input decides what a hostile rank 1 writes into the region (frame
headers, payloads, ring head, the tail of rank 0's ring to it) and what
rank 0 does meanwhile (post receives of various sizes, send, probe).  Rank 0
must end each input with messages delivered or an IvmpiError naming peer 1;
anything else (another exception, a write outside its own words or outside
a receive buffer, a fault on the guard pages around the region) is a crash.

Short run (as the test suite does, ~20 s):
    .venv/bin/python tests/fuzz/fuzz_receive.py -max_total_time=20 NEW_DIR tests/fuzz/corpus
Long run, keeping what it finds (Ctrl-C to stop; crashes land in ./crash-*):
    mkdir -p /tmp/ivmpi-corpus
    .venv/bin/python tests/fuzz/fuzz_receive.py -timeout=10 /tmp/ivmpi-corpus tests/fuzz/corpus
Fold new finds into the stored corpus by copying a few small files from the
long run's directory into tests/fuzz/corpus (libFuzzer's -merge=1 re-runs
argv[0] as a program, which a .py script is not).
Replay one input:  .venv/bin/python tests/fuzz/fuzz_receive.py crash-FILE
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports():
    import ivmpi.engine  # noqa: F401
    import ivmpi.layout  # noqa: F401
    import regionkit

from ivmpi.errors import IvmpiError  # noqa: E402

REGION = regionkit.GuardedRegion()
KINDS = [1, 2, 3, 4, 5, 6, 7, 0, 8, 0xFFFFFFFF]
RING = regionkit.RING_BYTES


def one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    REGION.reset()
    engine = REGION.engine(0)
    peer = regionkit.RawPeer(REGION)
    buffers = []
    pos = 0
    for _ in range(fdp.ConsumeIntInRange(0, 10)):
        kind = KINDS[fdp.ConsumeIntInRange(0, len(KINDS) - 1)]
        length = fdp.ConsumeIntInRange(0, 1100) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 2**32 - 1)
        tag = fdp.ConsumeIntInRange(-2, 4)
        context = fdp.ConsumeIntInRange(0, 1)
        a = fdp.ConsumeIntInRange(0, 5000) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 2**64 - 1)
        b = fdp.ConsumeIntInRange(0, 3)
        if pos + 32 > RING:
            break
        payload = fdp.ConsumeBytes(min(length, RING - pos - 32))
        peer.head = pos
        peer.put(kind, length, tag, context, a, b, payload=payload, publish=False)
        pos += 32 + (min(length, RING) + 7) // 8 * 8
        # Rank 0's moves between the peer's frames.
        move = fdp.ConsumeIntInRange(0, 4)
        if move == 1:
            buffers.append(regionkit.GuardedBuffer(fdp.ConsumeIntInRange(0, 6000)))
            engine.irecv(1 if fdp.ConsumeBool() else -1, fdp.ConsumeIntInRange(-1, 4), 0,
                         buffers[-1].view)
        elif move == 2:
            engine.isend(1, memoryview(bytes(fdp.ConsumeIntInRange(0, 3000))),
                         fdp.ConsumeIntInRange(0, 4), 0, sync=fdp.ConsumeBool())
    peer.publish(head=max(0, min(pos, RING) + fdp.ConsumeIntInRange(-16, 16) * 8))
    if fdp.ConsumeBool():
        peer.set_reverse_tail(fdp.ConsumeIntInRange(0, 2 * RING))
    before = regionkit.snapshot(REGION)
    try:
        for _ in range(4):
            engine.progress()
            engine.iprobe(-1, -1, 0)
    except IvmpiError as exc:
        if "peer 1" not in str(exc):
            raise AssertionError(f"error does not name the peer: {exc}") from exc
    after = regionkit.snapshot(REGION)
    bad = regionkit.foreign_writes(before, after, REGION.geo, 0)
    if bad:
        raise AssertionError(f"rank 0 wrote words it does not own at {bad[:8]}")
    for buf in buffers:
        if not buf.intact():
            raise AssertionError("a receive buffer's guard bytes changed")


def main():
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

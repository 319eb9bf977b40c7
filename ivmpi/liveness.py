"""Is a peer still there?  Judged from its slot in the region only.

Peers may be other virtual machines, so process ids and clocks mean
nothing across them: a peer is alive while the `heartbeat` counter in its
slot keeps changing (docs/layout.md, "Rank slots").  A blocked rank asks
`check(peer)` now and then; a peer whose counter has not moved for
IVMPI_PEER_TIMEOUT seconds, or whose slot says it finalized or aborted,
is reported with a PeerError naming it.
"""
import os
import time

from . import layout
from .errors import IvmpiError, PeerError


def _peer_timeout():
    value = os.environ.get("IVMPI_PEER_TIMEOUT") or "10"
    try:
        return float(value)
    except ValueError:
        raise IvmpiError(f"IVMPI_PEER_TIMEOUT={value!r} is not a number of seconds") from None


class Liveness:
    def __init__(self, mem, nranks, rank, slot_of=None):
        """slot_of: world rank -> slot for the ranks that share the region
        (default: all nranks, slot = rank).  Ranks outside it are reached
        through the MPI library, which reports their failures itself."""
        self.mem = mem
        self.rank = rank
        self.nranks = nranks
        self.slot_of = {r: r for r in range(nranks)} if slot_of is None else dict(slot_of)
        self.timeout = _peer_timeout()
        # peer -> (last heartbeat value seen, local time it was first seen)
        self.seen = {}
        # Peers reported dead, aborted or gone (not those that finalized):
        # at exit the MPI library may not be able to finalize without them.
        self.lost = set()

    def check(self, peer, what):
        """Raise PeerError if `peer` (a world rank, or -1 for any) cannot answer.

        For one peer: it must be attached and beating.  For any peer: at
        least one other rank must still be attached, and every attached one
        beating (a rank that finalized normally is simply out of the game).
        """
        if self.timeout <= 0:
            return
        now = time.monotonic()
        if peer >= 0:
            if peer != self.rank and peer in self.slot_of:
                self._check_one(peer, now, what, finalized_ok=False)
            return
        attached = 0
        for p in self.slot_of:
            if p != self.rank and self._check_one(p, now, what, finalized_ok=True):
                attached += 1
        # Ranks outside the region may still send through the library.
        if attached == 0 and len(self.slot_of) > 1 and len(self.slot_of) == self.nranks:
            raise PeerError(f"{what}: every other rank has finalized; no message can arrive")

    def check_members(self, ranks, what):
        """Raise PeerError if any of these ranks aborted or stopped beating
        (one that finalized normally is fine: it has done its part)."""
        if self.timeout <= 0:
            return
        now = time.monotonic()
        for p in ranks:
            if p != self.rank and p in self.slot_of:
                self._check_one(p, now, what, finalized_ok=True)

    def _check_one(self, peer, now, what, finalized_ok):
        slot = layout.Slot(self.mem, self.slot_of[peer])
        state = slot.word(layout.S_STATE)
        if state == layout.STATE_ABORTED:
            self.lost.add(peer)
            raise PeerError(f"{what}: rank {peer} aborted")
        if state == layout.STATE_FINALIZED:
            if finalized_ok:
                return False
            raise PeerError(f"{what}: rank {peer} has finalized; the message will never come")
        # A standalone rank is "joining" from admission until it attaches; it
        # does not beat yet, so the heartbeat timeout below still catches it.
        if state not in (layout.STATE_ATTACHED, layout.STATE_JOINING):
            self.lost.add(peer)
            raise PeerError(f"{what}: rank {peer}'s slot shows state "
                            f"{layout.STATE_NAMES.get(state, state)}: it left the job or the "
                            f"region was reset")
        beat = slot.word(layout.S_HEARTBEAT)
        last = self.seen.get(peer)
        if last is None or last[0] != beat:
            self.seen[peer] = (beat, now)
        elif now - last[1] > self.timeout:
            self.lost.add(peer)
            raise PeerError(
                f"{what}: rank {peer} has shown no heartbeat for {now - last[1]:.1f} s "
                f"(IVMPI_PEER_TIMEOUT={self.timeout:g}): it died, hangs, or its machine is paused")
        return True

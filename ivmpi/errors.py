"""The exceptions ivmpi raises.

Every error is an ``IvmpiError``; the message names the cause and, where
there is one, the peer and the operation.  Errors that MPI defines an error
class for (truncation, bad rank, ...) are ``ivmpi.request.MPIError``, which
is both an IvmpiError and an ``mpi4py.MPI.Exception`` so that code catching
mpi4py's exception keeps working unchanged (it lives there because importing
mpi4py's MPI module starts MPI, which the region tools must not do).
"""


class IvmpiError(RuntimeError):
    """Base class of every ivmpi error."""


class RegionError(IvmpiError):
    """The region cannot be found, opened, mapped or used."""


class BoundsError(IvmpiError, IndexError):
    """An access would fall outside the region or outside a buffer."""


class CorruptRegionError(IvmpiError):
    """A value read from shared memory is impossible (a corrupt or hostile peer)."""


class PeerError(IvmpiError):
    """A peer died, stopped beating, or left the job."""


class IvmpiTimeoutError(IvmpiError, TimeoutError):
    """A wait did not complete within IVMPI_TIMEOUT / IVMPI_PEER_TIMEOUT."""


class BufferSpecError(IvmpiError, ValueError, BufferError):
    """A buffer or buffer specification given by the caller is unusable.
    Also a BufferError, which is what mpi4py raises for, e.g., a read-only
    receive buffer."""

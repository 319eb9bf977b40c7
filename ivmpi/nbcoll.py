"""Nonblocking and persistent collectives through the region.

``NonblockingCollectives`` is a base of ``ivmpi.Intracomm``: each method it
defines replaces the MPI library's call on the communicator's handle; a
call it does not define stays mpi4py's (the library's transport).
"""


class NonblockingCollectives:
    """The I* and *_init collectives of an ivmpi communicator."""

"""Process topologies of ivmpi communicators.

``TopologyConstructors`` is a base of ``ivmpi.Intracomm``: each method it
defines replaces the MPI library's call on the communicator's handle; a
call it does not define stays mpi4py's (the library's transport).
"""


class TopologyConstructors:
    """Create_cart, Create_graph, Create_dist_graph(_adjacent) of an ivmpi
    communicator."""

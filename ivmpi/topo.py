"""Process topologies of ivmpi communicators.

``TopologyConstructors`` is a base of ``ivmpi.Intracomm``: each method it
defines replaces the MPI library's call on the communicator's handle; a
call it does not define stays mpi4py's (the library's transport).

The communicators they make are ivmpi's Cartcomm, Graphcomm and
Distgraphcomm (ivmpi.topocomm, imported on first use: it builds on
ivmpi.comm, which imports this module).
"""
from .lib import MPI as _MPI


class TopologyConstructors:
    """Create_cart, Create_graph, Create_dist_graph(_adjacent), Cart_map and
    Graph_map of an ivmpi communicator.  Ranks are kept (reorder is
    accepted and ignored, as MPI allows)."""

    def Create_cart(self, dims, periods=None, reorder=False):
        from .topocomm import create_cart
        return create_cart(self, dims, periods, reorder)

    def Create_graph(self, index, edges, reorder=False):
        from .topocomm import create_graph
        return create_graph(self, index, edges, reorder)

    def Create_dist_graph_adjacent(self, sources, destinations, sourceweights=None,
                                   destweights=None, info=_MPI.INFO_NULL, reorder=False):
        from .topocomm import create_dist_graph_adjacent
        return create_dist_graph_adjacent(self, sources, destinations, sourceweights,
                                          destweights, info, reorder)

    def Create_dist_graph(self, sources, degrees, destinations, weights=None,
                          info=_MPI.INFO_NULL, reorder=False):
        from .topocomm import create_dist_graph
        return create_dist_graph(self, sources, degrees, destinations, weights, info, reorder)

    def Cart_map(self, dims, periods=None):
        from .topocomm import cart_map
        return cart_map(self, dims, periods)

    def Graph_map(self, index, edges):
        from .topocomm import graph_map
        return graph_map(self, index, edges)

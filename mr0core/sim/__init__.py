"""Simulation: PDG pre-pass and main pass, and the isochromat reference.

:func:`compute_graph` builds the Phase Distribution Graph, :func:`execute_graph` simulates along
it; :func:`isochromat_sim` is the slow, independent check.
"""

from .accuracy import accuracy_settings
from .graph import Graph, compute_graph, compute_graph_ext
from .isochromat import isochromat_sim
from .memory import estimate_pdg, estimate_pdg_from_graph
from .pdg import execute_graph

__all__ = [
    "Graph",
    "accuracy_settings",
    "compute_graph",
    "compute_graph_ext",
    "estimate_pdg",
    "estimate_pdg_from_graph",
    "execute_graph",
    "isochromat_sim",
]

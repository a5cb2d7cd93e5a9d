"""mr0core: a standalone, differentiable Bloch simulator and reconstruction library.

The public names follow MR-zero's documentation, so ``import mr0core as mr0`` can replace
``import MRzeroCore as mr0`` in existing scripts.
"""

from mr0core import util
from mr0core.io.mrd import sig_to_mrd
from mr0core.phantom import (
    CustomVoxelPhantom,
    NiftiMapping,
    NiftiPhantom,
    NiftiRef,
    NiftiTissue,
    PhantomSystem,
    PhantomUnits,
    SimData,
    TissueDict,
    VoxelGridPhantom,
)
from mr0core.phantom.brainweb import generate_brainweb_phantoms
from mr0core.pulseq import SeqFormatError
from mr0core.pulseq.export import pulseq_write_cartesian
from mr0core.recon.adjoint import reco_adjoint
from mr0core.sequence import Pulse, PulseUsage, Repetition, Sequence, chain
from mr0core.sim import Graph, compute_graph, compute_graph_ext, execute_graph, isochromat_sim

__all__ = [
    "CustomVoxelPhantom",
    "Graph",
    "NiftiMapping",
    "NiftiPhantom",
    "NiftiRef",
    "NiftiTissue",
    "PhantomSystem",
    "PhantomUnits",
    "Pulse",
    "PulseUsage",
    "Repetition",
    "SeqFormatError",
    "Sequence",
    "SimData",
    "TissueDict",
    "VoxelGridPhantom",
    "chain",
    "compute_graph",
    "compute_graph_ext",
    "execute_graph",
    "generate_brainweb_phantoms",
    "isochromat_sim",
    "pulseq_write_cartesian",
    "reco_adjoint",
    "sig_to_mrd",
    "util",
]
__version__ = "0.1.0"

"""mr0core: a standalone, differentiable Bloch simulator and reconstruction library.

The public names follow MR-zero's documentation, so ``import mr0core as mr0`` can replace
``import MRzeroCore as mr0`` in existing scripts.
"""

from typing import TYPE_CHECKING

from mr0core._lazy import lazy_attributes

if TYPE_CHECKING:  # what type checkers and editors see; at run time the names load lazily
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

# public name -> module; loaded on first use (mr0core._lazy), so that a light module such as
# mr0core.clitools imports without torch
_NAMES = {
    "util": ".util",
    "sig_to_mrd": ".io.mrd",
    "CustomVoxelPhantom": ".phantom",
    "NiftiMapping": ".phantom",
    "NiftiPhantom": ".phantom",
    "NiftiRef": ".phantom",
    "NiftiTissue": ".phantom",
    "PhantomSystem": ".phantom",
    "PhantomUnits": ".phantom",
    "SimData": ".phantom",
    "TissueDict": ".phantom",
    "VoxelGridPhantom": ".phantom",
    "generate_brainweb_phantoms": ".phantom.brainweb",
    "SeqFormatError": ".pulseq",
    "pulseq_write_cartesian": ".pulseq.export",
    "reco_adjoint": ".recon.adjoint",
    "Pulse": ".sequence",
    "PulseUsage": ".sequence",
    "Repetition": ".sequence",
    "Sequence": ".sequence",
    "chain": ".sequence",
    "Graph": ".sim",
    "compute_graph": ".sim",
    "compute_graph_ext": ".sim",
    "execute_graph": ".sim",
    "isochromat_sim": ".sim",
}

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
__getattr__, __dir__ = lazy_attributes(__name__, _NAMES, globals())
__version__ = "0.1.0"

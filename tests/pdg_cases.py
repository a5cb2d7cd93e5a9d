"""Cached inputs for tests that run the PDG suite's sequence classes on the built-in brain.

``brain(n)``: the tissue phantom at ``n``²; ``suite_seq(name, n)``: a class of
``scripts/pdg_suite.py`` built with PyPulseq and imported by our reader. Each is made once per
test session.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

from conftest import SCRIPTS

import mr0core as mr0
from mr0core.phantom.builtin_phantoms import write_phantom

sys.path.insert(0, str(SCRIPTS))
import pdg_suite

CASES = pdg_suite.CASES


@functools.cache
def brain(n: int) -> mr0.SimData:
    """Return the built-in brain's tissue phantom at ``n``² (the suite's grouped path)."""
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = write_phantom("brain", Path(tmp) / "brain", size=n)
        return mr0.TissueDict.load(str(path)).build()


@functools.cache
def suite_seq(name: str, n: int) -> mr0.Sequence:
    """Return the suite's class ``name`` at matrix size ``n`` as our :class:`~mr0core.Sequence`."""
    with tempfile.TemporaryDirectory() as tmp:
        return mr0.Sequence.import_file(pdg_suite.write_case(name, n, Path(tmp) / f"{name}.seq"))

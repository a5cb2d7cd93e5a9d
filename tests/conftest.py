"""Shared test configuration: marker handling and test data."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "seq-corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.seq"))

# The environment's own commands (mr0, mr0-server, hadolint, ...) come first on PATH, as if it
# were activated: the README runs the tests as `.venv/bin/python -m pytest` without activation.
_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``cuda`` tests without a GPU and ``reference`` tests without MR-zero."""
    has_cuda = torch.cuda.is_available()
    has_mr0 = importlib.util.find_spec("MRzeroCore") is not None
    skip_cuda = pytest.mark.skip(reason="no CUDA GPU")
    skip_ref = pytest.mark.skip(reason="mrzerocore (MR-zero) is not installed")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "reference" in item.keywords and not has_mr0:
            item.add_marker(skip_ref)


def assert_adjoint(
    forward: Callable[[torch.Tensor], torch.Tensor],
    adjoint: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    factor: float = 1.0,
    rtol: float = 1e-5,
) -> None:
    """Assert ``⟨A x, y⟩ = factor · ⟨x, Aᴴ y⟩`` for a linear operator pair, to ``rtol``.

    The one adjointness check of every operator pair (NUFFT, SENSE, the centred FFTs, the
    direct-DFT recon). ``factor`` is the known scale between the pair (e.g. ``N`` when the
    adjoint carries ``1/N``). Random complex ``x`` and ``y`` make a wrong adjoint fail with
    probability one.
    """
    ax = forward(x)
    ahy = adjoint(y)
    assert ax.shape == y.shape, f"A x has shape {tuple(ax.shape)}, y {tuple(y.shape)}"
    assert ahy.shape == x.shape, f"Aᴴ y has shape {tuple(ahy.shape)}, x {tuple(x.shape)}"
    lhs = complex(torch.vdot(ax.flatten(), y.flatten()))
    rhs = factor * complex(torch.vdot(x.flatten(), ahy.flatten()))
    assert abs(lhs - rhs) <= rtol * abs(lhs), f"<Ax, y> = {lhs}, <x, Aᴴy> = {rhs}"


@contextlib.contextmanager
def quiet_mrzero() -> Iterator[None]:
    """Silence MR-zero, which prints from Rust to file descriptor 1, and its warnings."""
    fd = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(fd, 1)
        os.close(null)
        os.close(fd)


@pytest.fixture(params=CORPUS_FILES, ids=[p.name for p in CORPUS_FILES])
def corpus_file(request: pytest.FixtureRequest) -> Path:
    """Each real Pulseq file of the test corpus."""
    return request.param


def run_session(
    port: int,
    config: str,
    params: dict | None = None,
    raw: Path | None = None,
    timeout: float = 300,
) -> list:
    """Run one MRD session against a local server; return every message of its answer.

    Sends config ``config``; with ``raw`` (an ISMRMRD file) its header first; the JSON text of
    ``params`` if given; then ``raw``'s acquisitions and a close.
    """
    import json
    import socket

    import ismrmrd

    from gadgets.wire.framing import MessageReader, MessageWriter

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        writer = MessageWriter(sock)
        writer.write_config_file(config)
        ds = None if raw is None else ismrmrd.Dataset(str(raw), "dataset", create_if_needed=False)
        try:
            if ds is not None:
                writer.write_header(ds.read_xml_header().decode())
            if params is not None:
                writer.write_text(json.dumps(params))
            if ds is not None:
                for i in range(ds.number_of_acquisitions()):
                    writer.write_acquisition(ds.read_acquisition(i))
        finally:
            if ds is not None:
                ds.close()
        writer.write_close()
        return list(MessageReader(sock))

"""Shared test configuration: marker handling, paths, test data and session helpers.

The test files mirror the source tree (``tests/mr0core/sim/``, ``tests/gadgets/serve/``,
``tests/scheduler/``, ``tests/project/`` for the repository itself). This folder is on
``sys.path`` (``pythonpath`` in pyproject.toml), so every test imports the helpers here and beside
it (``from conftest import ...``, ``import dicom_synth``) from whatever sub-folder it lives in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import socket
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ismrmrd
import pytest
import torch

from gadgets.framework.chain import DEFAULT_CHAINS_DIR
from gadgets.serve.server import MrdServer, ServerConfig
from gadgets.wire.framing import MessageReader, MessageWriter

REPO = Path(__file__).resolve().parents[1]
"""The repository's root."""
SCRIPTS = REPO / "scripts"
SHARED = REPO.parent / "shared"
"""Data beside the checkout (MR-zero's phantom, a larger Pulseq corpus); tests skip without it."""
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


def preview(port: int, params: dict, header: str | None = None) -> list:
    """Run one preview session; return every message of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        writer = MessageWriter(sock)
        writer.write_config_file("mr0_preview")
        if header is not None:
            writer.write_header(header)
        writer.write_text(json.dumps(params))
        writer.write_close()
        return list(MessageReader(sock))


# -- in-process mr0-servers ------------------------------------------------------------------------


@contextlib.contextmanager
def mr0_server(
    config: ServerConfig | None = None,
    *,
    gpu_monitor: Any = None,
    shutdown_grace_s: float = 10,
    **options: Any,
) -> Iterator[MrdServer]:
    """An in-process mr0-server on a free loopback port, shut down on exit.

    ``options`` are :class:`ServerConfig` fields over port 0 (a free port) and the built-in
    chains, or over the fields of ``config`` when one is given (a parsed command line, say);
    ``gpu_monitor`` goes to :class:`MrdServer`. On exit the server waits up to
    ``shutdown_grace_s`` (s) for the sessions in flight. Its port is ``server.address[1]``.
    """
    if config is None:
        config = ServerConfig(**{"port": 0, "chains_dir": DEFAULT_CHAINS_DIR, **options})
    else:
        config = dataclasses.replace(config, **options)
    srv = MrdServer(config, gpu_monitor=gpu_monitor)
    srv.start()
    try:
        yield srv
    finally:
        srv.shutdown(grace_s=shutdown_grace_s)


@pytest.fixture(scope="module")
def server_options() -> dict[str, Any]:
    """The :func:`mr0_server` options of a module's ``server``; a module overrides this fixture."""
    return {"idle_timeout_s": 60}


@pytest.fixture(scope="module")
def server(server_options: dict[str, Any]) -> Iterator[MrdServer]:
    """One in-process mr0-server per module, with the module's ``server_options``."""
    with mr0_server(**server_options) as srv:
        yield srv


@pytest.fixture
def server_factory() -> Iterator[Callable[..., MrdServer]]:
    """Start servers inside one test, each with its own :func:`mr0_server` arguments.

    Every server started is shut down after the test, the last started first.
    """
    with contextlib.ExitStack() as stack:
        yield lambda config=None, **options: stack.enter_context(mr0_server(config, **options))

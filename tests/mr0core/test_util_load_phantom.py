"""``util.load_phantom`` / ``util.simulate`` default to MR-zero's phantom, downloaded into the cwd.

The downloads run against an HTTP server of the test on 127.0.0.1 only; every test runs in a
temporary working directory and no test reaches beyond loopback.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from conftest import CORPUS, SHARED

import mr0core as mr0
from mr0core import util

SHARED_MAT = SHARED / "mr0-compat" / ("numerical_brain_cropped.mat")
NAME = "numerical_brain_cropped.mat"


def _small_brain_mat(path: Path) -> Path:
    """A small ``.mat`` of MR-zero's layout ``[x, y, channels]``: PD, T1, T2, dB0, B1."""
    rng = np.random.default_rng(7)
    x, y = np.meshgrid(np.linspace(-1, 1, 20), np.linspace(-1, 1, 24), indexing="ij")
    inside = (x**2 + y**2 < 0.8).astype(np.float32)
    maps = np.stack(
        [
            inside * (0.7 + 0.3 * rng.random(x.shape)),  # PD
            inside * (0.8 + 0.6 * rng.random(x.shape)),  # T1 (s)
            inside * (0.05 + 0.05 * rng.random(x.shape)),  # T2 (s)
            inside * 20 * x,  # dB0 (Hz)
            1 + 0.1 * y,  # B1 (relative)
        ],
        axis=-1,
    ).astype(np.float32)
    scipy.io.savemat(path, {"cropped_brain": maps})
    return path


@pytest.fixture(scope="module")
def source_mat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MR-zero's real phantom if the shared copy exists, else a small generated one."""
    if SHARED_MAT.is_file():
        return SHARED_MAT
    return _small_brain_mat(tmp_path_factory.mktemp("mat") / NAME)


@dataclass
class Server:
    """A loopback HTTP server of fixed files; ``requests`` lists the paths asked for."""

    base: str
    files: dict[str, bytes]
    truncate: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def server(source_mat: Path) -> Iterator[Server]:
    state = Server("", {f"/{NAME}": source_mat.read_bytes()})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # a truncated transfer: announce everything, send half, close
            self.wfile.write(body[: len(body) // 2] if self.path in state.truncate else body)

        def log_message(self, *args: object) -> None:  # keep the test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to open a URL."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"unexpected request: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the with block ends: nothing listens there


def test_default_url_is_mr_zeros_brain() -> None:
    assert util.DEFAULT_PHANTOM_URL == (
        "https://github.com/MRsources/MRzero-Core/raw/main/documentation/playground_mr0/"
        "numerical_brain_cropped.mat"
    )
    import inspect

    assert inspect.signature(util.load_phantom).parameters["url"].default == (
        util.DEFAULT_PHANTOM_URL
    )


def test_download_into_cwd_then_reuse(server: Server, cwd: Path, source_mat: Path) -> None:
    url = f"{server.base}/{NAME}"
    p = util.load_phantom(url=url)
    assert server.requests == [f"/{NAME}"]
    assert sorted(x.name for x in cwd.iterdir()) == [NAME]  # no partial file left
    assert (cwd / NAME).read_bytes() == source_mat.read_bytes()
    ref = mr0.VoxelGridPhantom.load_mat(source_mat)
    torch.testing.assert_close(p.PD, ref.PD)
    torch.testing.assert_close(p.B0, ref.B0)
    # second call: the file in the cwd is used, no request
    q = util.load_phantom((16, 16), url=url)
    assert server.requests == [f"/{NAME}"]
    assert q.shape == (16, 16, 1)


def test_file_in_cwd_is_loaded_without_request(
    cwd: Path, source_mat: Path, no_network: None
) -> None:
    shutil.copyfile(source_mat, cwd / NAME)
    p = util.load_phantom()  # MR-zero's default URL; its file is already here
    ref = mr0.VoxelGridPhantom.load_mat(source_mat)
    torch.testing.assert_close(p.PD, ref.PD)
    torch.testing.assert_close(p.T1, ref.T1)
    assert p.shape == ref.shape


def test_simulate_without_phantom_uses_mr_zeros_brain(
    cwd: Path, source_mat: Path, no_network: None
) -> None:
    shutil.copyfile(source_mat, cwd / NAME)
    seq = str(CORPUS / "write_gre.seq")
    signal, ktraj = util.simulate(seq, sim_size=(16, 16))
    explicit, _ = util.simulate(seq, util.load_phantom((16, 16), url=str(cwd / NAME)))
    torch.testing.assert_close(signal, explicit)
    builtin, _ = util.simulate(seq, util.load_phantom((16, 16), url="builtin:brain"))
    assert (signal - builtin).abs().max() > 0.05 * signal.abs().max()  # negative control
    assert ktraj.shape == (signal.shape[0], 4)


def test_offline_gives_one_line_error_naming_the_builtin(cwd: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/{NAME}"
    with pytest.raises(util.PhantomDownloadError) as info:
        util.load_phantom(url=url)
    message = str(info.value)
    assert "\n" not in message
    assert url in message
    assert 'url="builtin:brain"' in message
    assert isinstance(info.value, ConnectionError)
    assert list(cwd.iterdir()) == []  # neither the file nor a partial one


def test_http_error_and_truncated_transfer_leave_nothing(server: Server, cwd: Path) -> None:
    with pytest.raises(util.PhantomDownloadError, match="404"):
        util.load_phantom(url=f"{server.base}/missing.mat")
    server.truncate.add(f"/{NAME}")
    with pytest.raises(util.PhantomDownloadError, match="builtin:brain"):
        util.load_phantom(url=f"{server.base}/{NAME}")
    assert list(cwd.iterdir()) == []


def test_npz_url_loads_with_brainweb(server: Server, cwd: Path, tmp_path_factory) -> None:
    src = tmp_path_factory.mktemp("npz") / "subject05.npz"
    shape = (6, 5, 3)
    maps = {
        k: np.full(shape, v, np.float32)
        for k, v in [
            ("PD_map", 1),
            ("T1_map", 1.2),
            ("T2_map", 0.08),
            ("T2dash_map", 0.05),
            ("D_map", 1),
        ]
    }
    np.savez(src, **maps)
    server.files["/subject05.npz"] = src.read_bytes()
    p = util.load_phantom(url=f"{server.base}/subject05.npz")
    ref = mr0.VoxelGridPhantom.brainweb(src)
    assert p.shape == ref.shape == shape
    torch.testing.assert_close(p.T1, ref.T1)
    assert (cwd / "subject05.npz").is_file()


def test_url_must_name_a_phantom_file(cwd: Path, no_network: None) -> None:
    with pytest.raises(ValueError, match="file name"):
        util.load_phantom(url="http://127.0.0.1:9/")
    with pytest.raises(ValueError, match=r"\.mat and \.npz"):
        util.load_phantom(url="http://127.0.0.1:9/phantom.json")
    with pytest.raises(ValueError, match="http"):
        util.load_phantom(url="ftp://127.0.0.1/x.mat")


@pytest.mark.parametrize("kind", ["brain", "shepp-logan"])
def test_builtin_phantoms_need_no_network(cwd: Path, no_network: None, kind: str) -> None:
    p = util.load_phantom((32, 32), url=f"builtin:{kind}")
    assert p.shape == (32, 32, 1)
    assert float(p.PD.max()) > 0.5
    assert list(cwd.iterdir()) == []


def test_commands_and_server_keep_the_builtin_brain() -> None:
    """Nothing outside mr0core.util calls load_phantom without a url (they use built-ins)."""
    import re

    root = Path(mr0.__file__).resolve().parents[1]
    calls = []
    for folder in ("mr0core", "gadgets", "scheduler"):
        for path in (root / folder).rglob("*.py"):
            if path.name == "util.py" and path.parent.name == "mr0core":
                continue
            for match in re.finditer(r"load_phantom\(([^)]*)\)", path.read_text()):
                calls.append((path.name, match.group(1)))
    assert all("builtin:" in args for _, args in calls), calls

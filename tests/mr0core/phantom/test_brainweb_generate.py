"""``generate_brainweb_phantoms``: download into a cache, write NIfTI phantoms as MR-zero does.

A loopback HTTP server of the test stands in for BrainWeb's download service. It serves tiny
generated subjects (8 × 6 × 4 voxels) in BrainWeb's format: gzip-compressed raw unsigned bytes,
one volume per tissue class, selected by the ``do_download_alias`` query parameter. No test
reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import json
import math
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import mr0core as mr0
from mr0core import util
from mr0core.phantom import brainweb
from mr0core.phantom.brainweb import (
    FAT_SHIFT_PPM,
    TISSUE_VALUES,
    BrainWebDataError,
    generate_brainweb_phantoms,
)

SHAPE = (4, 6, 8)  # (z, y, x) of the served volumes; the 1 mm grid is (2, 3, 4)
ALIASES = ("bck", "csf", "gry", "wht", "fat", "mus", "m-s", "skl", "ves", "fat2", "dura", "mrw")
TISSUES = ("csf", "gm", "wm", "fat", "muscle", "muscle_skin", "vessels", "around_fat", "dura",
           "marrow")  # fmt: skip


def _subject() -> dict[str, np.ndarray]:
    """Membership volumes ``[z, y, x]`` (uint8) of a tiny subject, 2 × 2 × 2 blocks per 1 mm voxel.

    - block (z0, y0, x0): pure WM; block (z0, y0, x1): pure GM;
    - block (z0, y1, x0): GM 128 + WM 127 in every voxel;
    - block (z1, y0, x0): pure fat;
    - block (z1, y1, x1): GM 200 + WM 200 (classes summing to more than 255: normalised);
    - block (z0, y2, x3): CSF 155 + skull 100 (skull is no tissue);
    - the corner voxel z=3, y=5, x=7 (native): marrow (orientation marker);
    - everything else background.
    """
    v = {a: np.zeros(SHAPE, np.uint8) for a in ALIASES}
    v["bck"][:] = 255
    blocks = {
        (0, 0, 0): {"wht": 255},
        (0, 0, 1): {"gry": 255},
        (0, 1, 0): {"gry": 128, "wht": 127},
        (1, 0, 0): {"fat": 255},
        (1, 1, 1): {"gry": 200, "wht": 200},
        (0, 2, 3): {"csf": 155, "skl": 100},
    }
    for (bz, by, bx), values in blocks.items():
        sl = (slice(2 * bz, 2 * bz + 2), slice(2 * by, 2 * by + 2), slice(2 * bx, 2 * bx + 2))
        v["bck"][sl] = 0
        for alias, value in values.items():
            v[alias][sl] = value
    v["bck"][3, 5, 7] = 0
    v["mrw"][3, 5, 7] = 255
    return v


@dataclass
class Server:
    """Loopback stand-in for BrainWeb; ``requests`` lists the aliases asked for."""

    base: str = ""
    bodies: dict[str, bytes] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)
    queries: list[dict[str, list[str]]] = field(default_factory=list)


@pytest.fixture(scope="module")
def volumes() -> dict[str, np.ndarray]:
    return _subject()


@contextlib.contextmanager
def _serve(volumes: dict[str, np.ndarray]) -> Iterator[Server]:
    """Serve subjects 04 and 05 (the same volumes) on 127.0.0.1."""
    state = Server()
    for subject in ("04", "05"):
        for alias, vol in volumes.items():
            state.bodies[f"subject{subject}_{alias}"] = gzip.compress(vol.tobytes())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            state.queries.append(query)
            alias = query.get("do_download_alias", [""])[0]
            state.requests.append(alias)
            body = state.bodies.get(alias)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # a truncated transfer: announce everything, send half, close
            self.wfile.write(body[: len(body) // 2] if alias in state.truncate else body)

        def log_message(self, *args: object) -> None:  # keep the test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}/cgi/brainweb1"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server(volumes: dict[str, np.ndarray]) -> Iterator[Server]:
    with _serve(volumes) as state:
        yield state


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the with block ends: nothing listens there


def _generate(out: Path, server: Server, count: int = 1, **kwargs: object) -> list[Path]:
    return generate_brainweb_phantoms(
        out, count, base_url=server.base, source_shape=SHAPE, **kwargs
    )


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".") or p.suffix == ".part"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, volumes: dict[str, np.ndarray]) -> Path:
    """All configurations of subjects 04 and 05, built once for the read-only tests."""
    out = tmp_path_factory.mktemp("brainweb")
    with _serve(volumes) as state:
        written = _generate(out, state, 2)
    configs = ("3T", "7T-noise", "3T-highres-fat")
    expected = [f"subj{s}/subj{s}-{c}.json" for s in ("04", "05") for c in configs]
    assert [p.relative_to(out).as_posix() for p in written] == expected
    assert len(state.requests) == 2 * len(ALIASES)
    return out


# ------------------------------------------------------------------ what is written


def test_layout_and_requests(generated: Path) -> None:
    for s in ("04", "05"):
        names = sorted(p.name for p in (generated / f"subj{s}").iterdir())
        assert names == sorted(
            [
                f"subj{s}.nii.gz",
                f"subj{s}-highres.nii.gz",
                f"subj{s}-3T.json",
                f"subj{s}-7T-noise.json",
                f"subj{s}-3T-highres-fat.json",
                f"subj{s}-7T-noise_dB0.nii.gz",
                f"subj{s}-7T-noise_B1+.nii.gz",
            ]
        )
    cached = sorted(p.name for p in (generated / "cache").iterdir())
    assert cached == sorted(f"subject{s}_{a}.rawb.gz" for s in ("04", "05") for a in ALIASES)
    assert _leftovers(generated) == []
    config = json.loads((generated / "subj04" / "subj04-3T.json").read_text())
    assert list(config["tissues"]) == list(TISSUES)
    assert config["system"]["B0"] == 3.0


def test_request_format(server: Server, tmp_path: Path) -> None:
    _generate(tmp_path, server, config="3T")
    assert server.requests == [f"subject04_{a}" for a in ALIASES]
    for q in server.queries:
        assert q["format_value"] == ["raw_byte"]
        assert q["zip_value"] == ["gnuzip"]


def test_3t_tissue_values_and_memberships(generated: Path) -> None:
    t = mr0.TissueDict.load(generated / "subj04" / "subj04-3T.json")
    assert set(t) == set(TISSUES)
    assert t.system.B0 == 3.0
    v = TISSUE_VALUES["3T"]
    wm, gm = t["wm"], t["gm"]
    assert wm.PD.shape == (4, 3, 2)  # [x, y, z]
    torch.testing.assert_close(wm.size, torch.tensor([0.004, 0.003, 0.002]))
    # a voxel that was 100 % WM: WM's density and values, no GM
    assert wm.PD[0, 0, 0].item() == pytest.approx(v["wm"].PD)
    assert gm.PD[0, 0, 0].item() == 0.0
    assert wm.T1[0, 0, 0].item() == pytest.approx(1.084)
    assert wm.T2[0, 0, 0].item() == pytest.approx(0.069)
    assert wm.D[0, 0, 0].item() == pytest.approx(0.7)
    # the GM voxel gets GM's values (negative control: not WM's)
    assert gm.PD[1, 0, 0].item() == pytest.approx(v["gm"].PD)
    assert gm.T1[1, 0, 0].item() == pytest.approx(1.82)
    assert gm.T1[1, 0, 0].item() != pytest.approx(wm.T1[0, 0, 0].item())
    # partial volume: 128 / 127 of 255, each tissue with its own PD
    assert gm.PD[0, 1, 0].item() == pytest.approx(v["gm"].PD * 128 / 255, rel=1e-5)
    assert wm.PD[0, 1, 0].item() == pytest.approx(v["wm"].PD * 127 / 255, rel=1e-5)
    # classes summing to 400 are normalised: half and half
    assert gm.PD[1, 1, 1].item() == pytest.approx(v["gm"].PD / 2, rel=1e-5)
    assert wm.PD[1, 1, 1].item() == pytest.approx(v["wm"].PD / 2, rel=1e-5)
    # skull takes its share of the voxel but is no tissue
    assert t["csf"].PD[3, 2, 0].item() == pytest.approx(155 / 255, rel=1e-5)
    assert sum(float(t[n].PD[3, 2, 0]) for n in TISSUES) == pytest.approx(155 / 255, rel=1e-5)
    # fractions of every tissue voxel sum to one (not the skull voxel or the 1/8 marrow voxel)
    fractions = sum(t[n].PD / TISSUE_VALUES["3T"][n].PD for n in TISSUES)
    inside = fractions > 0
    inside[3, 2, 0] = inside[3, 2, 1] = False
    torch.testing.assert_close(fractions[inside], torch.ones(int(inside.sum())))
    # background voxels hold nothing
    assert float(fractions[2, 2, 1]) == 0.0
    # the marker (native z=3, y=5, x=7) lands in the 1 mm voxel x=3, y=2, z=1, at 1/8
    assert t["marrow"].PD[3, 2, 1].item() == pytest.approx(v["marrow"].PD / 8, rel=1e-5)
    assert float(t["marrow"].PD.sum()) == pytest.approx(v["marrow"].PD / 8, rel=1e-5)
    # 3T: fat on the water resonance, ideal B0 and B1
    assert float(t["fat"].B0.abs().max()) == 0.0
    assert torch.all(t["wm"].B1 == 1)


def test_highres_fat_grid_and_chemical_shift(generated: Path) -> None:
    t = mr0.TissueDict.load(generated / "subj04" / "subj04-3T-highres-fat.json")
    v = TISSUE_VALUES["3T"]
    assert t["wm"].PD.shape == (8, 6, 4)
    torch.testing.assert_close(t["wm"].size, torch.tensor([0.004, 0.003, 0.002]))
    # orientation: native (z, y, x) = (3, 5, 7) is NIfTI / TissueDict [x, y, z] = [7, 5, 3]
    assert t["marrow"].PD[7, 5, 3].item() == pytest.approx(v["marrow"].PD)
    assert float(t["marrow"].PD.sum()) == pytest.approx(v["marrow"].PD)
    assert t["fat"].PD[0, 0, 2].item() == pytest.approx(v["fat"].PD)
    shift = FAT_SHIFT_PPM * 42.5764 * 3.0  # Hz
    assert shift == pytest.approx(-434.28, abs=0.01)
    for name in ("fat", "around_fat", "marrow"):
        torch.testing.assert_close(t[name].B0, torch.full_like(t[name].B0, shift))
    for name in ("wm", "gm", "csf", "muscle"):
        assert float(t[name].B0.abs().max()) == 0.0, name
    # the 1 mm phantom is the 2 x 2 x 2 mean of this one
    low = mr0.TissueDict.load(generated / "subj04" / "subj04-3T.json")
    for name in TISSUES:
        pooled = t[name].PD.reshape(4, 2, 3, 2, 2, 2).mean(dim=(1, 3, 5))
        torch.testing.assert_close(low[name].PD, pooled)


def test_7t_noise_values_and_fields(generated: Path) -> None:
    t = mr0.TissueDict.load(generated / "subj04" / "subj04-7T-noise.json")
    assert t.system.B0 == 7.0
    assert t["wm"].T1[0, 0, 0].item() == pytest.approx(1.22)
    assert t["gm"].T2[1, 0, 0].item() == pytest.approx(0.047)
    three = mr0.TissueDict.load(generated / "subj04" / "subj04-3T.json")
    torch.testing.assert_close(t["wm"].PD, three["wm"].PD)  # the shared density file
    b0 = t["wm"].B0
    assert float(b0.std(unbiased=False)) == pytest.approx(brainweb.B0_STD_7T_HZ, rel=1e-4)
    assert abs(float(b0.mean())) < 1e-3
    b1 = t["wm"].B1.real
    assert b1.shape == (1, 4, 3, 2)
    assert 0.5 < float(b1.min()) < float(b1.max()) < 1.5
    # the maps are shared by all tissues, and the fat is not shifted here
    torch.testing.assert_close(t["fat"].B0, b0)
    # seeded per subject: another subject has another field, the same every run
    other = mr0.TissueDict.load(generated / "subj05" / "subj05-7T-noise.json")
    torch.testing.assert_close(other["wm"].PD, t["wm"].PD)
    assert float((other["wm"].B0 - b0).abs().max()) > 1.0
    header = nib.load(generated / "subj04" / "subj04-7T-noise_dB0.nii.gz").header
    assert int(header["sform_code"]) == 2
    assert int(header["qform_code"]) == 0


def test_phantoms_simulate(generated: Path) -> None:
    data = mr0.TissueDict.load(generated / "subj04" / "subj04-3T.json").build()
    assert data.PD.numel() > 0
    assert set(data.tissue_masks) == set(TISSUES)


# ------------------------------------------------------------------ cache


def test_cache_is_reused_and_output_rewritten(server: Server, tmp_path: Path) -> None:
    first = _generate(tmp_path, server, config="3T")
    assert len(server.requests) == len(ALIASES)
    before = (tmp_path / "subj04" / "subj04.nii.gz").read_bytes()
    (tmp_path / "subj04" / "subj04.nii.gz").unlink()
    second = _generate(tmp_path, server, config=["3T", "7T-noise"])
    assert len(server.requests) == len(ALIASES)  # nothing downloaded again
    assert (tmp_path / "subj04" / "subj04.nii.gz").read_bytes() == before
    assert first == second[:1]
    # negative control: another output folder has no cache, so it downloads
    _generate(tmp_path / "other", server, config="3T")
    assert len(server.requests) == 2 * len(ALIASES)


def test_environment_variable_names_the_mirror(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(brainweb.URL_ENV, server.base)
    generate_brainweb_phantoms(tmp_path, 1, config="3T", source_shape=SHAPE)
    assert len(server.requests) == len(ALIASES)


# ------------------------------------------------------------------ failures


def test_unreachable_server_one_line_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/cgi/brainweb1"
    with pytest.raises(util.PhantomDownloadError) as info:
        generate_brainweb_phantoms(tmp_path, 1, base_url=url, source_shape=SHAPE)
    message = str(info.value)
    assert "\n" not in message
    assert url in message
    assert "subject04_bck" in message
    assert "`mr0 phantom brain`" in message
    assert str(tmp_path / "cache") in message
    assert isinstance(info.value, ConnectionError)
    assert list((tmp_path / "cache").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_truncated_transfer_leaves_no_file(server: Server, tmp_path: Path) -> None:
    server.truncate.add("subject04_wht")
    with pytest.raises(util.PhantomDownloadError, match="broke off"):
        _generate(tmp_path, server)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert cached == sorted(f"subject04_{a}.rawb.gz" for a in ALIASES[:3])  # before "wht"
    assert _leftovers(tmp_path) == []
    # the next run downloads only what is missing
    server.truncate.clear()
    server.requests.clear()
    _generate(tmp_path, server, config="3T")
    assert server.requests == [f"subject04_{a}" for a in ALIASES[3:]]


def test_http_error(server: Server, tmp_path: Path) -> None:
    del server.bodies["subject04_csf"]
    with pytest.raises(util.PhantomDownloadError, match="HTTP 404"):
        _generate(tmp_path, server)
    assert not (tmp_path / "cache" / "subject04_csf.rawb.gz").exists()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (gzip.compress(bytes(math.prod(SHAPE) - 1)), "expected 192"),
        (gzip.compress(bytes(math.prod(SHAPE)))[:-12], "not a complete gzip stream"),
        (b"<html><body>BrainWeb: unknown alias</body></html>", "not a complete gzip stream"),
    ],
    ids=["short", "cut", "html"],
)
def test_corrupt_download_is_not_kept(
    server: Server, tmp_path: Path, body: bytes, match: str
) -> None:
    server.bodies["subject04_gry"] = body
    with pytest.raises(BrainWebDataError, match=match) as info:
        _generate(tmp_path, server)
    assert "subject04_gry" in str(info.value)
    assert not (tmp_path / "cache" / "subject04_gry.rawb.gz").exists()
    assert _leftovers(tmp_path) == []
    assert not (tmp_path / "subj04").exists()


def test_damaged_cache_file_is_named(server: Server, tmp_path: Path) -> None:
    _generate(tmp_path, server, config="3T")
    damaged = tmp_path / "cache" / "subject04_wht.rawb.gz"
    damaged.write_bytes(gzip.compress(b"\x00" * 10))
    with pytest.raises(BrainWebDataError, match="delete it") as info:
        _generate(tmp_path, server, config="3T")
    assert str(damaged) in str(info.value)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"config": "1.5T"}, ValueError, "'1.5T'"),
        ({"config": ["3T", "9.4T"]}, ValueError, "'9.4T'"),
        ({"config": []}, ValueError, "empty"),
        ({"config": 3}, TypeError, "got 3"),
        ({"subject_count": 0}, ValueError, "1..20"),
        ({"subject_count": 21}, ValueError, "1..20"),
        ({"subject_count": "3T"}, TypeError, "config='3T'"),
        ({"subject_count": 1.5}, TypeError, "1.5"),
        ({"subject_count": True}, TypeError, "True"),
        ({"base_url": "ftp://example.org/x"}, ValueError, "ftp://"),
        ({"source_shape": (4, 6)}, ValueError, r"\(4, 6\)"),
    ],
)
def test_bad_arguments_fail_before_any_request(
    server: Server, tmp_path: Path, kwargs: dict[str, object], error: type, match: str
) -> None:
    args = {"subject_count": 1, "base_url": server.base, "source_shape": SHAPE, **kwargs}
    with pytest.raises(error, match=match):
        generate_brainweb_phantoms(tmp_path / "out", **args)  # type: ignore[arg-type]
    assert server.requests == []
    assert not (tmp_path / "out").exists()


def test_defaults_are_brainwebs() -> None:
    assert brainweb.BRAINWEB_URL == "https://brainweb.bic.mni.mcgill.ca/cgi/brainweb1"
    assert brainweb.SOURCE_SHAPE == (362, 434, 362)
    assert len(brainweb.SUBJECTS) == 20
    assert mr0.generate_brainweb_phantoms is generate_brainweb_phantoms

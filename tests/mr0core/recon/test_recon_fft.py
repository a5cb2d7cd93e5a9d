"""The centred FFT of :mod:`mr0core.recon.fourier`: convention, inverse, and its single home."""

from __future__ import annotations

import io
import tokenize
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, assert_adjoint

from mr0core.recon.fourier import fftc, ifftc

NORMS = ("backward", "forward", "ortho")


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize(
    ("shape", "dims"),
    [((8,), 0), ((3, 7, 6), (-2, -1)), ((2, 5, 4, 9), (1, 2, 3)), ((4, 6, 5), -2)],
)
def test_matches_numpy_and_round_trips(shape, dims, norm):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    axes = (dims,) if isinstance(dims, int) else dims
    ref_fwd = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes), axes=axes, norm=norm), axes)
    ref_inv = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(x, axes), axes=axes, norm=norm), axes)
    t = torch.from_numpy(x)  # complex128: compare to numpy at double precision
    np.testing.assert_allclose(fftc(t, dims, norm=norm).numpy(), ref_fwd, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ifftc(t, dims, norm=norm).numpy(), ref_inv, rtol=1e-12, atol=1e-12)
    back = ifftc(fftc(t, dims, norm=norm), dims, norm=norm)
    np.testing.assert_allclose(back.numpy(), x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [8, 9])
def test_origin_is_index_n_over_2(n):
    """A delta at ``n // 2`` (x = 0) has a flat spectrum; one voxel further, the phase ramp
    ``exp(-2πi (k - n//2) / n)`` of a shift by +1 voxel (k = 0 also at ``n // 2``)."""
    x = torch.zeros(n, dtype=torch.complex128)
    x[n // 2] = 1
    assert torch.allclose(fftc(x, 0, norm="backward"), torch.ones_like(x))
    x = torch.roll(x, 1)
    k = torch.arange(n, dtype=torch.float64) - n // 2
    ramp = torch.exp(-2j * torch.pi * k / n)
    assert torch.allclose(fftc(x, 0, norm="backward"), ramp)


def test_norms_scale_as_torch_names_them():
    x = torch.randn(4, 6, dtype=torch.complex128)
    n = x.numel()
    b = fftc(x, (0, 1), norm="backward")
    assert torch.allclose(fftc(x, (0, 1), norm="forward"), b / n)
    assert torch.allclose(fftc(x, (0, 1), norm="ortho"), b / n**0.5)
    # "forward": the inverse is the plain sum, as the Cartesian recon wants
    assert torch.allclose(ifftc(x, (0, 1), norm="forward"), ifftc(x, (0, 1), norm="backward") * n)


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm must be one of"):
        fftc(torch.zeros(4, dtype=torch.complex64), 0, norm="unitary")  # type: ignore[arg-type]


# -- one definition site ---------------------------------------------------------------------

HOME = "mr0core/recon/fourier.py"
# Uses of fftshift/ifftshift that are not a centred FFT of the recon's convention, counted so
# that a new copy anywhere still fails:
ALLOWED = {
    # grid_positions: voxel coordinates size * fftshift(fftfreq(n)), no transform
    # scale_fft: k-space crop/pad with the image origin at index 0 (uncentred image axis)
    "mr0core/phantom/voxel_grid.py": 3,
    # 2-D profile: ifft2 of a spectrum given in FFT order, then the image rolled to the centre
    "mr0core/phantom/custom_voxel.py": 1,
}


def shift_uses(root: Path) -> Counter[str]:
    """Count the Python names ``fftshift`` and ``ifftshift`` (code only: comments and strings
    are ignored) per file under ``root/mr0core``, ``root/gadgets`` and ``root/scheduler``."""
    counts: Counter[str] = Counter()
    for package in ("mr0core", "gadgets", "scheduler"):
        for path in sorted((root / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            for tok in tokenize.generate_tokens(io.StringIO(source).readline):
                if tok.type == tokenize.NAME and tok.string in ("fftshift", "ifftshift"):
                    counts[path.relative_to(root).as_posix()] += 1
    return counts


def test_centred_fft_is_written_once():
    uses = shift_uses(REPO)
    assert uses[HOME] >= 2
    stray = {p: c for p, c in uses.items() if p != HOME and c != ALLOWED.get(p, 0)}
    assert not stray, f"fftshift/ifftshift outside {HOME}: {stray}; use fftc/ifftc"


def test_scanner_finds_a_copy(tmp_path):
    """Negative control: a centred FFT written out in a gadget is found."""
    pkg = tmp_path / "gadgets"
    pkg.mkdir()
    (pkg / "x.py").write_text(
        "import torch\n# fftshift in a comment does not count\n"
        "def f(x):\n    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x)))\n"
    )
    (tmp_path / "mr0core").mkdir()
    (tmp_path / "scheduler").mkdir()
    assert shift_uses(tmp_path) == Counter({"gadgets/x.py": 2})


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", [(8, 6), (7, 5, 3)])
def test_centred_ffts_are_adjoint(shape: tuple[int, ...], norm: str) -> None:
    """ifftc is fftc's adjoint up to the norm's scale (N, 1 or 1/N); fftc itself is not."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, dtype=torch.complex128, generator=g)
    y = torch.randn(shape, dtype=torch.complex128, generator=g)
    dims = tuple(range(len(shape)))
    n = float(np.prod(shape))
    factor = {"backward": n, "ortho": 1.0, "forward": 1 / n}[norm]
    assert_adjoint(lambda v: fftc(v, dims, norm=norm), lambda v: ifftc(v, dims, norm=norm), x, y,
                   factor=factor, rtol=1e-10)  # fmt: skip
    with pytest.raises(AssertionError):  # negative control: the forward as its own adjoint
        assert_adjoint(lambda v: fftc(v, dims, norm=norm), lambda v: fftc(v, dims, norm=norm),
                       x, y, factor=factor, rtol=1e-10)  # fmt: skip

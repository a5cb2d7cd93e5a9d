"""The reconstruction memory model (mr0core.recon.memory): each method's terms scale with the
sizes that drive them, and bad inputs are refused.

The agreement with measured peaks is checked by scripts/calibrate_estimate.py."""

from __future__ import annotations

import math

import pytest

from mr0core.recon import adjoint
from mr0core.recon import memory as M
from mr0core.recon.auto import METHODS


def test_constants_mirror_the_code() -> None:
    assert adjoint._CHUNK_ELEMENTS == M.RECON_ADJOINT_CHUNK


def _recon(method: str, coils: int, matrix: tuple[int, ...] = (96, 96)) -> int:
    return M.estimate_recon_bytes(matrix, coils, method)


def test_fft_is_the_documented_formula() -> None:
    """8 C (K + 4 N) + 4 N, with K = N samples by default."""
    n, c = 96 * 96, 3
    assert _recon("fft", c) == 8 * c * (n + 4 * n) + 4 * n


def test_fft_is_linear_and_sense_quadratic_in_the_coils() -> None:
    fft = [_recon("fft", c) for c in (2, 3, 4)]
    assert fft[2] - 2 * fft[1] + fft[0] == 0
    # SENSE: the Walsh covariances are quadratic ([C, C, N2])
    sense = [_recon("sense", c) for c in (2, 3, 4)]
    assert sense[2] - 2 * sense[1] + sense[0] == pytest.approx(
        2 * M.C64 * 96 * 96 * M.RECON_WALSH_COPIES, abs=2
    )
    assert _recon("auto", 4) == max(_recon("fft", 4), _recon("sense", 4))
    assert _recon("sense", 1) == _recon("fft", 1)  # one coil: no SENSE


def test_nufft_grid_and_default_samples() -> None:
    # the NUFFT's oversampled grid: 4 N per batch in 2-D, 8 N in 3-D
    assert M.estimate_recon_bytes((64, 64, 64), 1, "nufft", samples=1) > M.C64 * 8 * 64**3
    # the grids are batched over at most min(coils, threads)
    one, two = (M.estimate_recon_bytes((64, 64), 4, "nufft", threads=t) for t in (1, 2))
    assert two - one == M.C64 * 4 * 64 * 64
    # default samples: a Nyquist-sampled radial acquisition, π/2 · N
    k = math.ceil(math.pi / 2 * 64 * 64)
    assert M.estimate_recon_bytes((64, 64), 1, "nufft") == M.estimate_recon_bytes(
        (64, 64), 1, "nufft", samples=k
    )


def test_adjoint_works_in_chunks() -> None:
    """The phase matrix is chunked: beyond the chunk, more samples add only per-sample terms."""
    n = 32 * 32
    chunk = M.RECON_ADJOINT_CHUNK // n
    big, bigger = (M.estimate_recon_bytes((32, 32), 1, "adjoint", samples=s)
                   for s in (chunk, 2 * chunk))  # fmt: skip
    assert bigger - big == (M.C64 + M.RECON_SAMPLE_BYTES) * chunk


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("big", 8), {}, "matrix"),
        (([64], 8), {}, "matrix"),
        (([64, 0], 8), {}, "matrix entry"),
        (([64, 64.0], 8), {}, "matrix entry"),
        (([64, 64], 0), {}, "coils"),
        (([64, 64], True), {}, "coils"),
        (([64, 64], 1, "magic"), {}, "method"),
        (([64, 64], 1, "fft"), {"samples": 0}, "samples"),
        (([64, 64], 1, "nufft"), {"threads": 0}, "threads"),
    ],
)
def test_bad_inputs_are_value_errors(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.estimate_recon_bytes(*args, **kwargs)


def test_every_method_has_a_figure_and_the_package_exports_it() -> None:
    import mr0core.recon

    assert mr0core.recon.estimate_recon_bytes is M.estimate_recon_bytes
    for method in METHODS:
        assert M.estimate_recon_bytes((32, 32), 2, method) > 0

"""Tests of the built-in numpy-level phantoms (mr0core.phantom.builtin)."""

from __future__ import annotations

import gzip
import math
from importlib import resources

import nibabel as nib
import numpy as np
import pytest

from mr0core.phantom import builtin
from mr0core.phantom.builtin import (
    BRAIN_FOV_CENTRE_MNI_MM,
    BRAIN_FOV_MM,
    SHEPP_LOGAN_FOV_MM,
    SLICE_THICKNESS_MM,
    SegmentedPhantom,
    brain,
    shepp_logan,
)

LABELS = {"gm": 1, "wm": 2, "csf": 3}


def packaged_segmentation() -> nib.Nifti1Image:
    path = resources.files("mr0core").joinpath("data").joinpath("brain")
    raw = path.joinpath("icbm2009a_seg.nii.gz").read_bytes()
    return nib.Nifti1Image.from_bytes(gzip.decompress(raw))


def fractions(p: SegmentedPhantom, pd: dict[str, float]) -> dict[str, np.ndarray]:
    return {t: p.density[t].astype(np.float64) / pd[t] for t in p.density}


def check_common(p: SegmentedPhantom, shape: tuple[int, int, int], coils: int) -> None:
    assert p.shape == shape
    for d in p.density.values():
        assert d.shape == shape
        assert d.dtype == np.float32
        assert np.all(d >= 0)
    assert p.dB0.shape == shape
    assert p.dB0.dtype == np.float32
    assert p.B1_tx.shape == (1, *shape)
    assert p.B1_tx.dtype == np.float32
    assert p.B1_rx.shape == (coils, *shape)
    assert p.B1_rx.dtype == np.complex64
    assert p.affine.shape == (4, 4)
    assert p.affine.dtype == np.float64
    # voxel centres: the centre index maps to the world origin
    centre = p.affine @ np.array([*((np.array(shape) - 1) / 2), 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
    for table in (p.T1, p.T2, p.T2dash, p.ADC):
        assert set(table) == set(p.density)
        assert all(v > 0 for v in table.values())


# ---------------------------------------------------------------------------------------------
# brain
# ---------------------------------------------------------------------------------------------


def test_brain_fractions_match_source_slice() -> None:
    p = brain(64)
    img = packaged_segmentation()
    seg = np.asarray(img.dataobj)
    z_mni = img.affine[2, 3] + np.arange(seg.shape[2]) * img.affine[2, 2]
    zc = BRAIN_FOV_CENTRE_MNI_MM[2]
    in_slab = np.abs(z_mni - zc) < 0.5 * SLICE_THICKNESS_MM
    assert in_slab.sum() == 5
    frac = fractions(p, builtin._BRAIN_PD)
    voxel_volume = float(np.prod(p.voxel_size))
    for tissue, label in LABELS.items():
        reference = float((seg[:, :, in_slab] == label).sum())  # mm³ of 1 mm voxels
        ours = float(frac[tissue].sum()) * voxel_volume
        assert reference > 0
        assert abs(ours / reference - 1.0) < 0.05, tissue
        assert abs(ours / reference - 1.0) < 1e-4, tissue  # area averaging is exact


def test_brain_whole_volume_is_preserved() -> None:
    p = brain(16, slices=31)  # 31 x 4.97 mm cover the 154 mm of the brain
    img = packaged_segmentation()
    seg = np.asarray(img.dataobj)
    frac = fractions(p, builtin._BRAIN_PD)
    voxel_volume = float(np.prod(p.voxel_size))
    for tissue, label in LABELS.items():
        reference = float((seg == label).sum())
        assert float(frac[tissue].sum()) * voxel_volume == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize(("size", "slices", "coils"), [(64, 1, 1), (50, 3, 2), (7, 40, 3)])
def test_brain_shapes_and_partial_volume(size: int, slices: int, coils: int) -> None:
    p = brain(size, slices=slices, coils=coils)
    check_common(p, (size, size, slices), coils)
    assert set(p.density) == {"gm", "wm", "csf"}
    total = sum(fractions(p, builtin._BRAIN_PD).values())
    assert total.max() <= 1 + 1e-6
    assert total.max() > 0.99  # interior voxels are full
    thickness = min(SLICE_THICKNESS_MM, 154.0 / slices)
    np.testing.assert_allclose(
        p.voxel_size, [BRAIN_FOV_MM / size, BRAIN_FOV_MM / size, thickness], rtol=1e-12
    )
    np.testing.assert_allclose(np.diag(p.affine)[:3], p.voxel_size)  # RAS+, axis-aligned


def test_brain_field_strengths() -> None:
    p3, p15 = brain(16, field="3T"), brain(16, field="1.5T")
    assert p3.field_T == 3.0
    assert p15.field_T == 1.5
    for t in p3.T1:
        assert p3.T1[t] > p15.T1[t]  # T1 lengthens with B0
        assert p3.T2dash[t] < p15.T2dash[t]  # more susceptibility dephasing at 3 T
    assert p3.T1 == {"gm": 1.33, "wm": 0.83, "csf": 3.0}
    assert p15.T1 == {"gm": 1.1, "wm": 0.56, "csf": 2.06}
    # T2* of the source is recovered from T2 and T2'
    t2star = {t: 1 / (1 / p3.T2[t] + 1 / p3.T2dash[t]) for t in p3.T2}
    assert t2star == pytest.approx({"gm": 0.066, "wm": 0.053, "csf": 0.2})
    # same geometry, field maps scale
    for t in p3.density:
        np.testing.assert_array_equal(p3.density[t], p15.density[t])
    np.testing.assert_allclose(p15.dB0, 0.5 * p3.dB0, rtol=1e-5, atol=1e-4)
    assert 10.0 < np.abs(p3.dB0).max() < 100.0
    b1_3, b1_15 = p3.B1_tx, p15.B1_tx
    assert b1_3.min() > 0.75
    assert b1_3.max() < 1.25
    assert np.ptp(b1_15) < np.ptp(b1_3)


@pytest.mark.parametrize("field", ["3", "3t", " 3T ", "1.5", "1.5t", "1.5T"])
def test_field_aliases(field: str) -> None:
    expected = 3.0 if field.strip().startswith("3") else 1.5
    assert brain(8, field=field).field_T == expected
    assert shepp_logan(8, field=field).field_T == expected


def test_coils() -> None:
    one = brain(32, coils=1)
    assert one.B1_rx.dtype == np.complex64
    np.testing.assert_array_equal(one.B1_rx, 1.0)
    p = brain(64, coils=4)
    rss = np.sqrt((np.abs(p.B1_rx) ** 2).sum(axis=0))
    np.testing.assert_allclose(rss[31:33, 31:33, 0], 1.0, rtol=0.01)
    maps = p.B1_rx.reshape(4, -1)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(maps[i] - maps[j]).max() > 0.1
    # each coil is most sensitive near itself: coil 0 is anterior (+y)
    mag0 = np.abs(p.B1_rx[0, :, :, 0])
    assert mag0[:, -1].mean() > 2 * mag0[:, 0].mean()
    # smooth phase: neighbouring voxels differ by well under a radian inside the FOV
    assert np.abs(np.angle(p.B1_rx[:, 1:] / p.B1_rx[:, :-1])).max() < 0.5
    s = shepp_logan(64, coils=4)
    rss = np.sqrt((np.abs(s.B1_rx) ** 2).sum(axis=0))
    np.testing.assert_allclose(rss[31:33, 31:33, 0], 1.0, rtol=0.01)


@pytest.mark.parametrize("func", [brain, shepp_logan])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 3},
        {"size": 513},
        {"size": 64.0},
        {"size": True},
        {"coils": 0},
        {"coils": 65},
        {"slices": 0},
        {"slices": 155},
        {"field": "7T"},
        {"field": "2"},
        {"field": ""},
    ],
)
def test_bad_arguments(func: object, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs)) if "field" not in kwargs else "field"):
        func(**kwargs)  # type: ignore[operator]


def test_slice_limits() -> None:
    assert brain(8, slices=154).shape == (8, 8, 154)
    assert shepp_logan(8, slices=48).shape == (8, 8, 48)
    with pytest.raises(ValueError, match="slices"):
        shepp_logan(8, slices=49)


# ---------------------------------------------------------------------------------------------
# Shepp–Logan
# ---------------------------------------------------------------------------------------------


def painted_areas(ellipses: tuple, nx: int = 20001) -> dict[str, float]:
    """Area per tissue (normalised units) of painter-ordered ellipses, by exact scanlines.

    For each x (midpoint rule) every ellipse's y-chord is solved analytically; the tissue of
    each piece between chord ends is that of the last ellipse containing it.
    """
    dx = 2.0 / nx
    xs = -1.0 + (np.arange(nx) + 0.5) * dx
    lo, hi = [], []
    for _, x0, y0, a, b, theta in ellipses:
        c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
        u = xs - x0
        qa = s**2 / a**2 + c**2 / b**2
        qb = 2 * u * c * s * (1 / a**2 - 1 / b**2)
        qc = u**2 * (c**2 / a**2 + s**2 / b**2) - 1
        disc = qb**2 - 4 * qa * qc
        root = np.sqrt(np.where(disc >= 0, disc, np.nan))
        lo.append(y0 + (-qb - root) / (2 * qa))
        hi.append(y0 + (-qb + root) / (2 * qa))
    lo_a, hi_a = np.array(lo).T, np.array(hi).T  # [nx, ellipses]
    breaks = np.sort(np.concatenate([lo_a, hi_a], axis=1), axis=1)  # nan last
    mids = 0.5 * (breaks[:, 1:] + breaks[:, :-1])
    lengths = np.nan_to_num(np.diff(breaks, axis=1))
    label = np.full(mids.shape, -1)
    for k in range(len(ellipses)):
        inside = (mids >= lo_a[:, k : k + 1]) & (mids <= hi_a[:, k : k + 1])
        label = np.where(inside, k, label)
    areas: dict[str, float] = {}
    for k, (tissue, *_) in enumerate(ellipses):
        areas[tissue] = areas.get(tissue, 0.0) + float(lengths[label == k].sum()) * dx
    return areas


def test_shepp_logan_areas() -> None:
    size = 128
    p = shepp_logan(size)
    check_common(p, (size, size, 1), 1)
    frac = fractions(p, builtin._SL_PD)
    pixel_area = (SHEPP_LOGAN_FOV_MM / size) ** 2
    to_mm2 = (SHEPP_LOGAN_FOV_MM / 2) ** 2
    ours = {t: float(f.sum()) * pixel_area for t, f in frac.items()}

    # closed forms: nested ellipses and the disjoint tumours
    pi = math.pi
    analytic = {
        "scalp": pi * (0.72 * 0.95 - 0.69 * 0.92),
        "marrow": pi * (0.69 * 0.92 - 0.6624 * 0.874),
        "tumor": pi * (2 * 0.046 * 0.046 + 2 * 0.046 * 0.023 + 0.023 * 0.023),
    }
    for tissue, area in analytic.items():
        assert ours[tissue] == pytest.approx(area * to_mm2, rel=0.02), tissue
    assert sum(ours.values()) == pytest.approx(pi * 0.72 * 0.95 * to_mm2, rel=0.005)

    # all tissues, overlaps included (tumour over WM, WM over the ventricles)
    reference = painted_areas(builtin._SL_ELLIPSES)
    for tissue, area in analytic.items():
        assert reference[tissue] == pytest.approx(area, rel=1e-4)
    for tissue in ("scalp", "marrow", "csf", "gm", "wm", "tumor"):
        assert ours[tissue] == pytest.approx(reference[tissue] * to_mm2, rel=0.02), tissue
    assert frac["gm"].max() == pytest.approx(1.0)
    assert sum(frac.values()).max() <= 1 + 1e-6


def test_shepp_logan_parameters() -> None:
    p3, p15 = shepp_logan(16, slices=3, coils=2), shepp_logan(16, field="1.5T")
    check_common(p3, (16, 16, 3), 2)
    assert set(p3.density) == {"scalp", "marrow", "csf", "gm", "wm", "tumor"}
    np.testing.assert_array_equal(p3.density["gm"][:, :, 0], p3.density["gm"][:, :, 2])
    np.testing.assert_allclose(
        p3.voxel_size, [SHEPP_LOGAN_FOV_MM / 16, SHEPP_LOGAN_FOV_MM / 16, SLICE_THICKNESS_MM]
    )
    assert p3.T1["gm"] == pytest.approx(0.857 * 3**0.376)
    assert p15.T1["wm"] == pytest.approx(0.583 * 1.5**0.382)
    assert p3.T1["csf"] == p15.T1["csf"] == 4.2
    for t in p3.T1:
        if t != "csf":
            assert p3.T1[t] > p15.T1[t]
    assert p3.T2 == p15.T2
    assert p3.T1["csf"] > p3.T1["gm"] > p3.T1["wm"]
    assert np.all(p3.dB0 == 0)
    assert np.all(p3.B1_tx == 1)
    assert p3.density["gm"].max() == pytest.approx(0.745)

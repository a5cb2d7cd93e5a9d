"""Image outputs: NIfTI + BIDS sidecars, ground-truth maps, ISMRMRD images, PNG previews."""

from __future__ import annotations

import json

import ismrmrd
import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch
from pulseq_builders import build_flash

from mr0core.io.bids import GROUND_TRUTH_MAPS, bids_sidecar, write_ground_truth
from mr0core.io.mrd_images import (
    image_array,
    make_mrd_images,
    read_mrd_images,
    write_mrd_images,
)
from mr0core.io.nifti import image_affine, sidecar_path, write_nifti
from mr0core.io.params import sequence_parameters
from mr0core.io.png import write_png
from mr0core.phantom.voxel_grid import VoxelGridPhantom, default_affine, grid_positions

SHAPE = (8, 6, 4)
FOV = (0.16, 0.12, 0.08)  # 20 mm voxels


def _phantom(shape=SHAPE, fov=FOV, channels=2, seed=0) -> VoxelGridPhantom:
    g = torch.Generator().manual_seed(seed)
    maps = {k: torch.rand(shape, generator=g) for k in ("PD", "T1", "T2", "T2dash", "D", "B0")}
    b1 = torch.rand((channels, *shape), generator=g) * torch.exp(
        1j * torch.rand((channels, *shape), generator=g)
    )
    return VoxelGridPhantom(**maps, B1=b1, coil_sens=torch.ones(shape), size=torch.tensor(fov))


def _centred_idft(kspace: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(kspace)))


# -- NIfTI ---------------------------------------------------------------------------------------


def test_affine_equals_phantom_default_affine():
    affine = image_affine(SHAPE, FOV)
    np.testing.assert_allclose(affine, default_affine(SHAPE, torch.tensor(FOV)))
    np.testing.assert_allclose(affine, _phantom().affine)


def test_marker_voxel_lands_at_its_world_position():
    index = (6, 1, 3)
    affine = image_affine(SHAPE, FOV)
    world_mm = (affine @ np.array([*index, 1.0]))[:3]
    # the shared convention: (i - n // 2) * fov / n
    expected = [(i - n // 2) * f / n * 1000 for i, n, f in zip(index, SHAPE, FOV, strict=True)]
    np.testing.assert_allclose(world_mm, expected)
    np.testing.assert_allclose(world_mm, [40.0, -40.0, 20.0])
    np.testing.assert_allclose(
        world_mm, grid_positions(SHAPE, torch.tensor(FOV, dtype=torch.float64))[index] * 1000
    )


def test_fft_reconstructed_point_is_placed_by_the_affine(tmp_path):
    """A point at r0 sampled on the Cartesian k-grid reconstructs where the affine says."""
    n, fov = (16, 12, 1), (0.192, 0.144, 0.005)
    r0 = np.array([5 * fov[0] / n[0], -3 * fov[1] / n[1], 0.0])  # m, on the voxel grid
    k = [(np.arange(m) - m // 2) / f for m, f in zip(n, fov, strict=True)]
    kx, ky, kz = np.meshgrid(*k, indexing="ij")
    signal = np.exp(-2j * np.pi * (kx * r0[0] + ky * r0[1] + kz * r0[2]))
    image = _centred_idft(signal)
    path = write_nifti(tmp_path / "point.nii.gz", image, image_affine(n, fov))
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    peak = np.unravel_index(np.argmax(data), data.shape)
    world_mm = (img.affine @ np.array([*peak, 1.0]))[:3]
    np.testing.assert_allclose(world_mm, r0 * 1000, atol=1e-4)
    assert data.max() == pytest.approx(1.0, rel=1e-5)  # magnitude written


def test_nifti_round_trip_keeps_data_affine_and_header(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.random(SHAPE).astype(np.float32)
    affine = image_affine(SHAPE, FOV, centre_m=(0.01, -0.02, 0.03))
    path = write_nifti(tmp_path / "img.nii", image, affine)
    img = nib.load(path)
    np.testing.assert_array_equal(np.asarray(img.dataobj), image)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert int(img.header["qform_code"]) == 1
    assert int(img.header["sform_code"]) == 1
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert img.get_data_dtype() == np.float32
    # the centre voxel sits at centre_m
    centre = (img.affine @ np.array([n // 2 for n in SHAPE] + [1.0]))[:3]
    np.testing.assert_allclose(centre, [10.0, -20.0, 30.0], atol=1e-4)


def test_rotated_affine_keeps_voxel_size_and_centre():
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = image_affine(SHAPE, FOV, centre_m=(0.0, 0.0, 0.01), rotation=rot)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [20.0, 20.0, 20.0])
    np.testing.assert_allclose(affine[:3, :3] @ [4, 3, 2] + affine[:3, 3], [0.0, 0.0, 10.0])
    # +x index steps go anterior (+y world) with this rotation
    np.testing.assert_allclose(affine[:3, 0], [0.0, 20.0, 0.0])


def test_four_d_and_complex_components(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.standard_normal((*SHAPE, 3)) + 1j * rng.standard_normal((*SHAPE, 3))
    affine = image_affine(SHAPE, FOV)
    mag = nib.load(write_nifti(tmp_path / "mag.nii.gz", image, affine, time_step_s=0.5))
    np.testing.assert_allclose(np.asarray(mag.dataobj), np.abs(image), rtol=1e-6)
    assert mag.shape == (*SHAPE, 3)
    assert mag.header.get_zooms()[3] == pytest.approx(0.5)
    cplx = nib.load(write_nifti(tmp_path / "c.nii.gz", image, affine, component="complex"))
    assert cplx.get_data_dtype() == np.complex64
    np.testing.assert_allclose(np.asarray(cplx.dataobj), image, rtol=1e-6)
    phase = nib.load(
        write_nifti(tmp_path / "p.nii.gz", torch.tensor(image), affine, component="phase")
    )
    np.testing.assert_allclose(np.asarray(phase.dataobj), np.angle(image), atol=1e-6)


def test_nifti_errors(tmp_path):
    affine = image_affine(SHAPE, FOV)
    with pytest.raises(IsADirectoryError):
        write_nifti(tmp_path, np.zeros(SHAPE), affine)
    (tmp_path / "d.nii.gz").mkdir()
    with pytest.raises(IsADirectoryError):
        write_nifti(tmp_path / "d.nii.gz", np.zeros(SHAPE), affine)
    with pytest.raises(ValueError, match=r"\(2, 2, 2, 2, 2\)"):
        write_nifti(tmp_path / "x.nii", np.zeros((2, 2, 2, 2, 2)), affine)
    with pytest.raises(ValueError, match="affine"):
        write_nifti(tmp_path / "x.nii", np.zeros(SHAPE), np.eye(3))
    with pytest.raises(ValueError, match="component"):
        write_nifti(tmp_path / "x.nii", np.zeros(SHAPE), affine, component="abs")
    with pytest.raises(ValueError, match="fov_m"):
        image_affine(SHAPE, (0.1, -0.1, 0.1))
    with pytest.raises(ValueError, match="rotation"):
        image_affine(SHAPE, FOV, rotation=np.ones((3, 3)))


# -- BIDS sidecar and ground truth ----------------------------------------------------------------


@pytest.fixture(scope="module")
def flash_params():
    return sequence_parameters(build_flash(te=5e-3, tr=12e-3, flip_deg=15.0))


def test_sidecar_keys_and_bids_units(flash_params):
    settings = {"accuracy": 1e-3, "max_state_count": 200, "noise_std": 0.01, "seed": 7}
    side = bids_sidecar(
        flash_params, phantom_name="builtin:brain", field_strength_T=3.0, sim_settings=settings
    )
    assert side["EchoTime"] == pytest.approx(0.005, abs=1e-6)  # s, not ms
    assert side["RepetitionTime"] == pytest.approx(0.012, abs=1e-6)
    assert side["FlipAngle"] == pytest.approx(15.0, abs=0.01)  # degrees, not rad
    assert side["MagneticFieldStrength"] == 3.0
    assert side["MRAcquisitionType"] == "2D"
    assert side["PulseSequenceName"] == "flash"
    assert side["Manufacturer"] == "mr0-inline"
    assert side["ImageType"][2] == "M"
    assert side["ComplexImageComponent"] == "MAGNITUDE"
    assert side["AcquisitionMatrix"] == [16, 16, 1]
    np.testing.assert_allclose(side["AcquisitionVoxelSize"], [12.5, 12.5, 4.0])
    assert "InversionTime" not in side  # unknown values are left out
    assert side["Simulation"]["Phantom"] == "builtin:brain"
    assert side["Simulation"]["seed"] == 7
    assert side["DROSoftware"] == "mr0-inline"
    assert "SoftwareVersions" in side


def test_sidecar_json_round_trip_beside_nifti(tmp_path, flash_params):
    side = bids_sidecar(
        flash_params,
        phantom_name="p",
        sim_settings={"noise_std": np.float32(0.5), "b": torch.tensor([1.0, 2.0])},
        extra={"SeriesNumber": 3},
    )
    path = write_nifti(tmp_path / "sub-001_T1w.nii.gz", np.ones((4, 4, 1)), np.eye(4), sidecar=side)
    js = sidecar_path(path)
    assert js.name == "sub-001_T1w.json"
    loaded = json.loads(js.read_text())
    assert loaded == side
    assert loaded["Simulation"]["b"] == [1.0, 2.0]
    assert loaded["SeriesNumber"] == 3


def test_sidecar_without_params_and_bad_component():
    side = bids_sidecar(None, component="phase")
    assert side["ImageType"][2] == "P"
    assert "EchoTime" not in side
    with pytest.raises(ValueError, match="imaginary"):
        bids_sidecar(None, component="imaginary")


def test_ground_truth_maps_round_trip(tmp_path):
    phantom = _phantom()
    written = write_ground_truth(tmp_path / "gt", phantom, prefix="sub-001_acq-002")
    assert set(written) == {m.quantity for m in GROUND_TRUTH_MAPS}
    assert written["T1"].name == "sub-001_acq-002_T1map.nii.gz"
    for spec in GROUND_TRUTH_MAPS:
        img = nib.load(written[spec.quantity])
        np.testing.assert_allclose(img.affine, phantom.affine, atol=1e-5)
        data = np.asarray(img.dataobj)
        if spec.attribute == "B1":
            expected = phantom.B1.abs().permute(1, 2, 3, 0).numpy()
        else:
            expected = getattr(phantom, spec.attribute).numpy()
        np.testing.assert_allclose(data, expected, rtol=1e-6)
        side = json.loads(sidecar_path(written[spec.quantity]).read_text())
        assert side["Quantity"] == spec.quantity
        assert side["Units"] == spec.units
    assert json.loads(sidecar_path(written["T2"]).read_text())["Units"] == "s"
    assert json.loads(sidecar_path(written["B0"]).read_text())["Units"] == "Hz"
    for path in [*written.values(), *map(sidecar_path, written.values())]:
        assert path.stat().st_mode & 0o777 == 0o600


def test_ground_truth_single_channel_b1_is_3d(tmp_path):
    written = write_ground_truth(tmp_path, _phantom(channels=1), compress=False)
    assert written["B1"].suffix == ".nii"
    assert nib.load(written["B1"]).shape == SHAPE


# -- ISMRMRD images ------------------------------------------------------------------------------


def test_mrd_images_round_trip_with_dataset(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.standard_normal((2, 8, 6, 3)) + 1j * rng.standard_normal((2, 8, 6, 3))
    path = tmp_path / "out.h5"
    written = write_mrd_images(
        path,
        images,
        series_index=4,
        image_type="complex",
        fov_m=(0.16, 0.12, 0.03),
        position_mm=[[0.0, 0.0, -5.0], [0.0, 0.0, 5.0]],
        read_dir=(0.0, 1.0, 0.0),
        phase_dir=(1.0, 0.0, 0.0),
        slice_dir=(0.0, 0.0, -1.0),
        slices=[0, 1],
        contrasts=2,
        image_index_start=1,
        series_description="simulated",
        image_comment="PDG",
        window=(0.5, 2.0),
        processing_history=["MR0", "FFT"],
        meta={"Custom": [1, 2]},
    )
    assert len(written) == 2
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        assert dset.number_of_images("image_4") == 2
        back = [dset.read_image("image_4", i) for i in range(2)]
    finally:
        dset.close()
    for i, img in enumerate(back):
        np.testing.assert_allclose(image_array(img), images[i], rtol=1e-6)
        assert tuple(img.matrix_size) == (8, 6, 3)
        np.testing.assert_allclose(img.field_of_view, [160.0, 120.0, 30.0])
        np.testing.assert_allclose(img.position, [0.0, 0.0, -5.0 + 10.0 * i])
        np.testing.assert_allclose(img.read_dir, [0.0, 1.0, 0.0])
        np.testing.assert_allclose(img.phase_dir, [1.0, 0.0, 0.0])
        np.testing.assert_allclose(img.slice_dir, [0.0, 0.0, -1.0])
        assert img.image_index == 1 + i
        assert img.image_series_index == 4
        assert img.slice == i
        assert img.contrast == 2
        assert img.image_type == ismrmrd.IMTYPE_COMPLEX
        meta = ismrmrd.Meta.deserialize(img.attribute_string)
        assert meta["DataRole"] == "Image"
        assert meta["SeriesDescription"] == "simulated"
        assert meta["ImageComment"] == "PDG"
        assert float(meta["WindowCenter"]) == 0.5
        assert float(meta["WindowWidth"]) == 2.0
        assert meta["ImageProcessingHistory"] == ["MR0", "FFT"]
        assert meta["Custom"] == ["1", "2"]
    again = read_mrd_images(path)
    assert [im.image_index for im in again] == [1, 2]


def test_mrd_magnitude_image_and_default_window(tmp_path):
    image = np.zeros((10, 10, 1))
    image[2:8, 2:8] = 3.0
    (img,) = make_mrd_images(image * np.exp(1j * 0.3))
    assert img.image_type == ismrmrd.IMTYPE_MAGNITUDE
    assert img.data.dtype == np.float32
    np.testing.assert_allclose(image_array(img), image, rtol=1e-6)
    meta = ismrmrd.Meta.deserialize(img.attribute_string)
    centre, width = float(meta["WindowCenter"]), float(meta["WindowWidth"])
    assert centre - width / 2 <= 0.0
    assert centre + width / 2 >= 3.0


def test_mrd_image_survives_wire_serialisation():
    (img,) = make_mrd_images(np.arange(24.0).reshape(4, 3, 2), series_description="x")
    back = ismrmrd.Image.from_bytes(img.to_bytes())
    np.testing.assert_array_equal(image_array(back), np.arange(24.0).reshape(4, 3, 2))
    assert ismrmrd.Meta.deserialize(back.attribute_string)["SeriesDescription"] == "x"


def test_mrd_errors(tmp_path):
    with pytest.raises(ValueError, match="image_type"):
        make_mrd_images(np.zeros((2, 2)), image_type="rgb")
    with pytest.raises(ValueError, match="slices"):
        make_mrd_images(np.zeros((2, 4, 4, 1)), slices=[0, 1, 2])
    with pytest.raises(ValueError, match="position_mm"):
        make_mrd_images(np.zeros((4, 4, 1)), position_mm=(0.0, 1.0))
    with pytest.raises(IsADirectoryError):
        write_mrd_images(tmp_path, np.zeros((4, 4, 1)))
    with pytest.raises(FileNotFoundError):
        read_mrd_images(tmp_path / "missing.h5")


# -- PNG -----------------------------------------------------------------------------------------


def _bright_position(png: np.ndarray) -> tuple[float, float]:
    """(column, row) fraction of the brightest pixel; row 0 is the top of the picture."""
    grey = png[..., :3].mean(axis=-1)
    rows, cols = np.nonzero(grey >= grey.max() - 1e-6)
    return cols.mean() / grey.shape[1], rows.mean() / grey.shape[0]


def test_png_orientation_x_right_y_up(tmp_path):
    image = np.zeros((20, 10))
    image[17, 5] = 1.0  # high x, middle y
    col, row = _bright_position(mpimg.imread(write_png(tmp_path / "x.png", image)))
    assert col > 0.8
    assert 0.3 < row < 0.7
    image = np.zeros((20, 10))
    image[10, 8] = 1.0  # middle x, high y
    col, row = _bright_position(mpimg.imread(write_png(tmp_path / "y.png", image)))
    assert 0.3 < col < 0.7
    assert row < 0.2  # near the top


def test_png_montage_of_slices_and_frames(tmp_path):
    image = np.zeros((8, 8, 4))
    image[4, 4, 0] = 1.0  # slice 0 → top-left tile of a 2 x 2 grid
    col, row = _bright_position(mpimg.imread(write_png(tmp_path / "m.png", image, title="t")))
    assert col < 0.5
    assert row < 0.6
    image = np.zeros((8, 8, 4))
    image[4, 4, 3] = 1.0  # slice 3 → bottom-right tile
    col, row = _bright_position(mpimg.imread(write_png(tmp_path / "m3.png", image)))
    assert col > 0.5
    assert row > 0.5
    frames = np.zeros((8, 8, 2, 3))
    frames[4, 4, 1, 2] = 1.0  # z = 1 → second column, t = 2 → last row
    png = mpimg.imread(write_png(tmp_path / "t.png", frames, window=(0.0, 1.0)))
    assert png.shape[1] / png.shape[0] == pytest.approx(2 / 3, rel=0.05)
    col, row = _bright_position(png)
    assert col > 0.5
    assert row > 2 / 3


def test_png_errors(tmp_path):
    with pytest.raises(IsADirectoryError):
        write_png(tmp_path, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="window"):
        write_png(tmp_path / "a.png", np.zeros((4, 4)), window=(1.0, 0.0))
    with pytest.raises(ValueError, match="shape"):
        write_png(tmp_path / "a.png", np.zeros(4))

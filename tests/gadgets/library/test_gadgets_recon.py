"""The standard recon gadgets, run in-process: chains fed with ismrmrd objects.

References are produced in the same run: Debian's ismrmrd-tools generate Shepp-Logan raw data
(``ismrmrd_generate_cartesian_shepp_logan``) and reconstruct it (``ismrmrd_recon_cartesian_2d``,
FFT + RSS, no prewhitening, a float image ``[1, 1, 1, ny, nx]`` in ``<group>/cpp``); the
prewhitened reference is computed here with numpy; the radial reference is
:func:`mr0core.recon.auto.reconstruct` on the simulated data themselves. Images are compared by
NRMSE after the least-squares scale (the tools' FFT scale differs from ours).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest
import torch
from conftest import CORPUS

import mr0core as mr0
from gadgets.framework.chain import DEFAULT_CHAINS_DIR, Chain, load_chain, parse_chain
from gadgets.framework.core import Context, GadgetError, Text
from gadgets.library.recon import AcquisitionBuffer, NoiseAdjustGadget
from mr0core.io.mrd import MrdFormatError, kdata_from_acquisitions, read_mrd, sig_to_mrd
from mr0core.recon.auto import reconstruct
from mr0core.recon.cartesian import reco_cartesian
from mr0core.recon.kdata import AcqFlag, KData

GENERATE = shutil.which("ismrmrd_generate_cartesian_shepp_logan")
RECON = shutil.which("ismrmrd_recon_cartesian_2d")
needs_tools = pytest.mark.skipif(
    GENERATE is None or RECON is None, reason="ismrmrd-tools are not installed"
)
NOISE = int(AcqFlag.IS_NOISE_MEASUREMENT)


def nrmse(ours: np.ndarray, ref: np.ndarray) -> float:
    a = float((ours * ref).sum() / (ours * ours).sum())
    return float(np.linalg.norm(a * ours - ref) / np.linalg.norm(ref))


def read_dataset(path: Path) -> tuple[str, list[ismrmrd.Acquisition]]:
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        xml = dset.read_xml_header()
        acqs = [dset.read_acquisition(i) for i in range(dset.number_of_acquisitions())]
    finally:
        dset.close()
    return (xml.decode() if isinstance(xml, bytes) else xml), acqs


def generate(directory: Path, name: str, *args: str) -> Path:
    path = directory / name
    subprocess.run(
        [GENERATE, "-m", "128", "-c", "8", *args, "-o", str(path)],
        cwd=directory, check=True, capture_output=True,
    )  # fmt: skip
    return path


def run(chain_xml: str, xml: str, items, overrides=None):
    return list(Chain(parse_chain(chain_xml), Context(header_xml=xml), overrides).run(items))


def run_with(name: str, xml: str, items, overrides=None, **context):
    ctx = Context(header_xml=xml, **context)
    return list(load_chain(name, DEFAULT_CHAINS_DIR, ctx, overrides).run(items))


def pixels(image: ismrmrd.Image) -> np.ndarray:
    return np.asarray(image.data)[0, 0]  # [y, x]


@pytest.fixture(scope="module")
def shepp(tmp_path_factory):
    """Shepp-Logan, 128², 8 coils, noise calibration; the tool's recon of it."""
    if GENERATE is None or RECON is None:
        pytest.skip("ismrmrd-tools are not installed")
    d = tmp_path_factory.mktemp("shepp")
    path = generate(d, "shepp.h5", "-C")
    xml, acqs = read_dataset(path)
    subprocess.run([RECON, str(path)], cwd=d, check=True, capture_output=True)
    with h5py.File(path, "r") as f:
        ref = f["dataset/cpp/data"][0, 0, 0]  # [y, x]
    return path, xml, acqs, ref


# -- default chain vs ismrmrd's own recon --------------------------------------------------------


@needs_tools
def test_default_chain_matches_ismrmrd_recon(shepp):
    _, xml, acqs, ref = shepp
    assert int(acqs[0].flags) & NOISE  # -C puts a noise scan first
    out = run_with("default", xml, acqs, {"prewhitening": False})
    assert len(out) == 1
    (image,) = out
    assert isinstance(image, ismrmrd.Image)
    assert image.image_type == ismrmrd.IMTYPE_MAGNITUDE
    assert pixels(image).shape == ref.shape == (128, 128)
    err = nrmse(pixels(image), ref)
    print(f"default chain (no prewhitening) vs ismrmrd_recon_cartesian_2d: NRMSE {err:.2e}")
    assert err < 0.01


@needs_tools
def test_default_chain_prewhitens_like_numpy(shepp):
    _, xml, acqs, _ = shepp
    noise = np.asarray(acqs[0].data)  # [coils, samples]
    psi = noise @ noise.conj().T / noise.shape[1]
    whiten = np.linalg.inv(np.linalg.cholesky(psi))
    kspace = np.zeros((8, 128, 256), dtype=np.complex128)  # [coils, ky, kx]
    for acq in acqs[1:]:
        kspace[:, acq.idx.kspace_encode_step_1] = whiten @ np.asarray(acq.data)
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(1, 2))), axes=(1, 2))
    ref = np.sqrt((np.abs(img[:, :, 64:192]) ** 2).sum(axis=0))  # crop the 2x readout FOV
    (image,) = run_with("default", xml, acqs)
    err = nrmse(pixels(image), ref)
    print(f"default chain (prewhitened) vs numpy prewhitened RSS: NRMSE {err:.2e}")
    assert err < 0.01
    # and prewhitening changes the image (the coils' noise is correlated): not a no-op
    (plain,) = run_with("default", xml, acqs, {"prewhitening": False})
    assert nrmse(pixels(plain), ref) > 2 * err


@needs_tools
def test_noise_scan_never_reaches_the_image(shepp):
    _, xml, acqs, ref = shepp
    # the noise scan is never passed on by NoiseAdjust
    passed = list(Chain(parse_chain(_xml("NoiseAdjustGadget")), Context(header_xml=xml)).run(acqs))
    assert len(passed) == len(acqs) - 1
    assert not any(int(a.flags) & NOISE for a in passed)
    # a loud noise scan labelled as the centre line: ignored while flagged as noise; gridded
    # (flag cleared) it would ruin the image
    loud = ismrmrd.Acquisition(acqs[0].getHead())
    loud.data[:] = np.asarray(acqs[0].data) * 1000
    loud.idx.kspace_encode_step_1 = 64
    loud.center_sample = 128
    (good,) = run_with("default", xml, [loud, *acqs[1:]], {"prewhitening": False})
    loud.clear_all_flags()
    (bad,) = run_with("default", xml, [loud, *acqs[1:]], {"prewhitening": False})
    bad_err, good_err = nrmse(pixels(bad), ref), nrmse(pixels(good), ref)
    print(f"noise scan gridded as the centre line: NRMSE {bad_err:.3f}; kept out: {good_err:.2e}")
    assert bad_err > 0.3
    assert good_err < 0.01


@needs_tools
def test_image_geometry_and_meta(shepp):
    _, xml, acqs, _ = shepp
    moved = []
    for acq in acqs:
        a = ismrmrd.Acquisition(acq.getHead())
        a.data[:] = acq.data
        a.position[:] = [10.0, -20.0, 30.0]
        a.read_dir[:] = [0.0, 1.0, 0.0]
        a.phase_dir[:] = [1.0, 0.0, 0.0]
        a.slice_dir[:] = [0.0, 0.0, -1.0]
        a.patient_table_position[:] = [0.0, 0.0, -100.0]
        a.measurement_uid = 77
        moved.append(a)
    text = Text('{"note": "passes"}')
    out = run_with("default", xml, [text, *moved])
    assert out[0] is text  # text passes through unchanged
    (image,) = out[1:]
    assert list(image.position) == pytest.approx([10.0, -20.0, 30.0])
    assert list(image.read_dir) == pytest.approx([0.0, 1.0, 0.0])
    assert list(image.phase_dir) == pytest.approx([1.0, 0.0, 0.0])
    assert list(image.slice_dir) == pytest.approx([0.0, 0.0, -1.0])
    assert list(image.patient_table_position) == pytest.approx([0.0, 0.0, -100.0])
    assert list(image.field_of_view) == pytest.approx([300.0, 300.0, 6.0])  # recon FOV, mm
    assert list(image.matrix_size) == [128, 128, 1]
    assert image.measurement_uid == 77
    assert image.image_series_index == 1
    assert image.image_index == 1
    meta = ismrmrd.Meta.deserialize(image.attribute_string)
    for key in ("DataRole", "SeriesDescription", "ImageComment", "WindowCenter", "WindowWidth"):
        assert meta[key]
    assert meta["DataRole"] == "Image"
    history = meta["ImageProcessingHistory"]
    assert history[0] == "MR0"
    assert "FFT" in history
    assert "RSS" in history
    assert float(meta["WindowWidth"]) > 0


@needs_tools
def test_oversampling_removal_does_not_change_the_image(shepp):
    _, xml, acqs, _ = shepp
    (with_ro,) = run_with("default", xml, acqs)
    chain = _xml(
        "NoiseAdjustGadget", "AccumulateTriggerGadget", "FFTGadget", "CombineGadget",
        "ExtractGadget", "ImageFinishGadget",
    )  # fmt: skip
    (without,) = run(chain, xml, acqs)
    a, b = pixels(with_ro), pixels(without)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


@needs_tools
def test_adaptive_combine_routes_to_walsh(shepp):
    path, xml, acqs, _ = shepp
    (image,) = run_with("default", xml, acqs, {"method": "adaptive"})
    ref = reco_cartesian(read_mrd(path), coil_combine="walsh")[0, 0, 0, :, :, 0].abs().numpy()
    meta = ismrmrd.Meta.deserialize(image.attribute_string)
    assert "ADAPTIVE_COMBINE" in meta["ImageProcessingHistory"]
    assert nrmse(pixels(image), ref.T) < 1e-4


@needs_tools
def test_slices_trigger_separate_images(shepp):
    _, xml, acqs, _ = shepp
    body = acqs[1:]
    stream = []
    for s in (0, 1):
        for acq in body:
            a = ismrmrd.Acquisition(acq.getHead())
            a.data[:] = np.asarray(acq.data) * (1 + s)
            a.idx.slice = s
            stream.append(a)
    consumed = []

    def feed():
        for i, a in enumerate(stream):
            consumed.append(i)
            yield a

    ctx = Context(header_xml=xml)
    chain = load_chain("default", DEFAULT_CHAINS_DIR, ctx, {"prewhitening": False})
    it = chain.run(feed())
    first = next(it)
    # slice 0 is emitted at its LAST_IN_SLICE, before slice 1 is read
    assert len(consumed) == len(body)
    second = next(it)
    assert [first.slice, second.slice] == [0, 1]
    assert [first.image_index, second.image_index] == [1, 2]
    ratio = pixels(second).sum() / pixels(first).sum()
    assert ratio == pytest.approx(2.0, rel=1e-5)


# -- noise adjustment --------------------------------------------------------------------------


def test_noise_adjust_whitens_correlated_noise():
    rng = np.random.default_rng(3)
    coils, n = 4, 4096
    mix = np.array(
        [[1.0, 0.0, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0], [0.2, 0.3, 0.9, 0.0], [0.0, 0.5, 0.1, 1.2]]
    )

    def noise(samples):
        white = rng.standard_normal((coils, samples)) + 1j * rng.standard_normal((coils, samples))
        return (mix @ white).astype(np.complex64)

    scan = ismrmrd.Acquisition.from_array(noise(n))
    scan.flags = NOISE
    scan.sample_time_us = 5.0
    data = []
    for _ in range(8):
        a = ismrmrd.Acquisition.from_array(noise(n // 8))
        a.sample_time_us = 5.0
        data.append(a)
    out = list(NoiseAdjustGadget(Context()).process(iter([scan, *data])))
    assert len(out) == 8
    white = np.concatenate([np.asarray(a.data) for a in out], axis=1)
    cov = white @ white.conj().T / white.shape[1]
    raw = np.concatenate([np.asarray(a.data) for a in data], axis=1)
    raw_cov = raw @ raw.conj().T / raw.shape[1]
    # whitened: identity covariance within sampling error (~1/sqrt(4096) ≈ 0.016 per entry)
    assert np.abs(cov - np.eye(coils)).max() < 0.1
    assert np.abs(raw_cov - np.eye(coils)).max() > 1.0
    # off: unchanged objects
    same = list(NoiseAdjustGadget(Context(), prewhitening="false").process(iter([scan, *data])))
    assert all(a is b for a, b in zip(same, data, strict=True))


def test_noise_adjust_scales_by_the_dwell_ratio():
    """Noise measured with dwell 10 µs; data sampled with 5 µs have twice its bandwidth, so
    their noise covariance is twice the noise scan's. Whitened, it is the identity."""
    rng = np.random.default_rng(4)
    coils, n = 3, 8192
    mix = np.array([[1.0, 0.0, 0.0], [0.5, 0.9, 0.0], [0.1, 0.4, 1.1]])

    def noise(samples, variance):
        white = rng.standard_normal((coils, samples)) + 1j * rng.standard_normal((coils, samples))
        return (np.sqrt(variance / 2) * mix @ white).astype(np.complex64)

    scan = ismrmrd.Acquisition.from_array(noise(n, 1.0))
    scan.flags = NOISE
    scan.sample_time_us = 10.0
    data = []
    for _ in range(8):
        a = ismrmrd.Acquisition.from_array(noise(n // 8, 2.0))
        a.sample_time_us = 5.0
        data.append(a)
    out = list(NoiseAdjustGadget(Context()).process(iter([scan, *data])))
    white = np.concatenate([np.asarray(a.data) for a in out], axis=1)
    cov = white @ white.conj().T / white.shape[1]
    assert np.abs(cov - np.eye(coils)).max() < 0.08
    # the same data with a noise scan of equal dwell keep twice the variance
    scan.sample_time_us = 5.0
    out = list(NoiseAdjustGadget(Context()).process(iter([scan, *data])))
    white = np.concatenate([np.asarray(a.data) for a in out], axis=1)
    cov = white @ white.conj().T / white.shape[1]
    assert np.abs(cov - 2 * np.eye(coils)).max() < 0.16


# -- kdata_from_acquisitions ---------------------------------------------------------------------


@needs_tools
def test_kdata_from_acquisitions_equals_read_mrd(shepp):
    path, xml, acqs, _ = shepp
    a, b = read_mrd(path), kdata_from_acquisitions(xml, acqs)
    assert torch.equal(a.signal, b.signal)
    assert torch.equal(a.noise, b.noise)
    assert torch.equal(a.flags, b.flags)
    assert all(torch.equal(a.idx[k], b.idx[k]) for k in a.idx)
    assert (a.encoded_matrix, a.recon_matrix, a.center_line) == (
        b.encoded_matrix,
        b.recon_matrix,
        b.center_line,
    )
    with pytest.raises(MrdFormatError, match="no acquisitions"):
        kdata_from_acquisitions(xml, [])
    with pytest.raises(MrdFormatError, match=r"not an ismrmrd\.Acquisition"):
        kdata_from_acquisitions(xml, [acqs[1], Text("x")])
    with pytest.raises(MrdFormatError, match="does not parse"):
        kdata_from_acquisitions("<ismrmrdHeader><oops", acqs)
    with pytest.raises(MrdFormatError, match="only noise"):
        kdata_from_acquisitions(xml, acqs[:1])


# -- non-Cartesian and parallel imaging ----------------------------------------------------------


def test_nufft_chain_matches_reconstruct(tmp_path):
    seq = mr0.Sequence.import_file(CORPUS / "write_radial_gre.seq")
    # the recon is compared, not the simulation: a coarse accuracy keeps it quick (1e-3: 25 s)
    phantom = mr0.util.load_phantom((32, 32), url="builtin:brain")
    signal, _ = mr0.util.simulate(seq, phantom, accuracy=1e-2)
    path = sig_to_mrd(tmp_path / "radial.h5", signal, seq)
    xml, acqs = read_dataset(path)
    assert all(a.trajectory_dimensions == 2 for a in acqs)
    out = run_with("nufft", xml, acqs)
    assert len(out) == 1
    image = out[0]
    ref = reconstruct(KData.from_sequence(signal, seq)).image[0, 0, 0, :, :, 0].numpy()  # [x, y]
    assert pixels(image).shape == ref.T.shape == (64, 64)
    err = nrmse(pixels(image), ref.T)
    print(f"nufft chain vs reconstruct(KData.from_sequence): NRMSE {err:.2e}")
    assert err < 1e-3
    meta = ismrmrd.Meta.deserialize(image.attribute_string)
    assert "NUFFT" in meta["ImageProcessingHistory"]
    assert list(image.field_of_view) == pytest.approx([260.0, 260.0, 3.0])


def test_nufft_chain_needs_a_trajectory(shepp):
    _, xml, acqs, _ = shepp
    with pytest.raises(GadgetError, match="no trajectory"):
        run_with("nufft", xml, acqs)


@needs_tools
def test_sense_chain_on_undersampled_shepp_logan(tmp_path):
    # low noise (0.005 instead of 0.05), so that the comparison measures the recon, not noise
    path = generate(tmp_path, "r2.h5", "-a", "2", "-w", "32", "-C", "-n", "0.005")
    full = generate(tmp_path, "full.h5", "-C", "-n", "0.005")
    xml, acqs = read_dataset(path)
    full_xml, full_acqs = read_dataset(full)
    images = run_with("sense", xml, acqs)
    # the tool writes two repetitions, with the odd and the even lines outside the centre
    assert [im.repetition for im in images] == [0, 1]
    # fully sampled reference: the same phantom and coils, FFT + adaptive combination
    (ref,) = run_with("default", full_xml, full_acqs, {"method": "adaptive"})
    # zero-filled FFT of the undersampled data folds the object over half the FOV
    folded = run_with("default", xml, acqs, {"method": "adaptive", "include_calibration": True})
    for image, fold in zip(images, folded, strict=True):
        meta = ismrmrd.Meta.deserialize(image.attribute_string)
        assert "SENSE" in meta["ImageProcessingHistory"]
        err = nrmse(pixels(image), pixels(ref))
        folded_err = nrmse(pixels(fold), pixels(ref))
        print(f"SENSE R=2 vs fully sampled: NRMSE {err:.3f}; zero-filled FFT: {folded_err:.3f}")
        assert err < 0.05
        assert folded_err > 3 * err


# -- saving --------------------------------------------------------------------------------------


@needs_tools
def test_save_data_chain_writes_the_session(tmp_path, shepp):
    _, xml, acqs, _ = shepp
    text = Text(json.dumps({"a": 1}))
    out = run_with("savedata", xml, [*acqs, text], save_dir=tmp_path, session_id="s1")
    assert out == [text]  # nothing but text comes back
    path = tmp_path / "s1.h5"
    back_xml, back = read_dataset(path)
    assert back_xml.strip() == xml.strip()
    assert len(back) == len(acqs)
    for a, b in zip(acqs, back, strict=True):
        assert int(a.flags) == int(b.flags)
        assert a.idx.kspace_encode_step_1 == b.idx.kspace_encode_step_1
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    # a second session with the same id does not overwrite the first
    run_with("savedata", xml, acqs[:3], save_dir=tmp_path, session_id="s1")
    assert len(read_dataset(path)[1]) == len(acqs)
    assert len(read_dataset(tmp_path / "s1-1.h5")[1]) == 3


def test_save_data_chain_needs_a_save_dir():
    with pytest.raises(GadgetError, match="save directory"):
        run_with("savedata", "", [Text("x")])


def test_save_data_chain_refuses_unsafe_session_ids(tmp_path):
    with pytest.raises(GadgetError, match="not a safe file name"):
        run_with("savedata", "", [], save_dir=tmp_path, session_id="../escape")
    assert list(tmp_path.iterdir()) == []


def test_buffers_carry_geometry_of_the_centre_line(shepp):
    _, xml, acqs, _ = shepp
    stream = []
    for acq in acqs:
        a = ismrmrd.Acquisition(acq.getHead())
        a.data[:] = acq.data
        a.position[:] = [0.0, float(acq.idx.kspace_encode_step_1), 0.0]
        stream.append(a)
    out = run(_xml("NoiseAdjustGadget", "AccumulateTriggerGadget"), xml, stream)
    (buf,) = out
    assert isinstance(buf, AcquisitionBuffer)
    assert buf.kdata.center_line == 64
    assert buf.geometry.position_mm == (0.0, 64.0, 0.0)
    assert buf.geometry.matrix == (128, 128, 1)
    assert buf.kdata.noise is None  # NoiseAdjust kept the noise scan


def _xml(*classnames: str) -> str:
    gadgets = "".join(
        f"<gadget><name>G{i}</name><classname>{c}</classname></gadget>"
        for i, c in enumerate(classnames)
    )
    return f"<configuration><version>2</version><stream>{gadgets}</stream></configuration>"


@pytest.mark.parametrize(
    ("what", "imtype", "fn"),
    [
        ("magnitude", ismrmrd.IMTYPE_MAGNITUDE, np.abs),
        ("phase", ismrmrd.IMTYPE_PHASE, np.angle),
        ("real", ismrmrd.IMTYPE_REAL, np.real),
        ("imag", ismrmrd.IMTYPE_IMAG, np.imag),
    ],
)
def test_extract_then_finish_stores_the_component(what, imtype, fn):
    from gadgets.library.recon import ExtractGadget, Geometry, ImageBuffer, ImageFinishGadget

    rng = np.random.default_rng(0)
    values = (rng.standard_normal((4, 3, 1)) + 1j * rng.standard_normal((4, 3, 1))).astype(
        np.complex64
    )
    buf = ImageBuffer(torch.from_numpy(values), Geometry(matrix=(4, 3, 1)))
    (extracted,) = ExtractGadget(Context(), extract=what).process_item(buf)
    (image,) = ImageFinishGadget(Context()).process_item(extracted)
    assert image.image_type == imtype
    np.testing.assert_allclose(pixels(image), fn(values)[..., 0].T, rtol=1e-6, atol=1e-6)

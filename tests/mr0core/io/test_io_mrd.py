"""ISMRMRD raw data I/O: sig_to_mrd, read_mrd, and agreement with ISMRMRD's own tools.

References are produced in the same run by Debian's ismrmrd-tools
(``ismrmrd_generate_cartesian_shepp_logan``, ``ismrmrd_recon_cartesian_2d``); the recon tool
writes a float magnitude image ``[1, 1, 1, ny, nx]`` into ``<group>/cpp``. Images are compared
by NRMSE after the least-squares scale ``a = <ref, ours> / <ours, ours>`` (the tools' FFT scale
differs from ours).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import h5py
import ismrmrd
import ismrmrd.xsd
import numpy as np
import pytest
import torch
from conftest import CORPUS
from pulseq_builders import make_flash

import mr0core as mr0
from mr0core.io.mrd import MrdFormatError, header_says_simulated, read_mrd, sig_to_mrd
from mr0core.recon.cartesian import reco_cartesian
from mr0core.recon.kdata import AcqFlag, KData

GENERATE = shutil.which("ismrmrd_generate_cartesian_shepp_logan")
RECON = shutil.which("ismrmrd_recon_cartesian_2d")
needs_tools = pytest.mark.skipif(
    GENERATE is None or RECON is None,
    reason="ismrmrd-tools (ismrmrd_generate_cartesian_shepp_logan, ismrmrd_recon_cartesian_2d) "
    "are not installed",
)


def nrmse(ours: np.ndarray, ref: np.ndarray) -> float:
    a = float((ours * ref).sum() / (ours * ours).sum())
    return float(np.linalg.norm(a * ours - ref) / np.linalg.norm(ref))


def tool_recon(path: Path) -> np.ndarray:
    subprocess.run([RECON, str(path)], cwd=path.parent, check=True, capture_output=True)
    with h5py.File(path, "r") as f:
        return f["dataset/cpp/data"][0, 0, 0]  # [y, x]


@pytest.fixture(scope="module")
def simulated():
    """A 32 x 32 FLASH of the built-in brain, simulated once."""
    seq = make_flash(tr=10e-3, flip_deg=15.0)
    signal, _ = mr0.util.simulate(seq, mr0.util.load_phantom((32, 32), url="builtin:brain"))
    return seq, signal


# -- ISMRMRD's own data and recon ----------------------------------------------------------------


@needs_tools
def test_shepp_logan_matches_ismrmrd_recon(tmp_path):
    path = tmp_path / "shepp.h5"
    subprocess.run(
        [GENERATE, "-m", "128", "-c", "8", "-o", str(path)],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    ref = tool_recon(path)
    kd = read_mrd(path)
    assert kd.encoded_matrix == (256, 128, 1)
    assert kd.recon_matrix == (128, 128, 1)
    assert kd.n_coils == 8
    assert kd.n_readouts == 128
    assert kd.trajectory == "cartesian"
    img = reco_cartesian(kd)[0, 0, 0, :, :, 0].numpy()
    assert img.shape == (128, 128)
    assert nrmse(img.T, ref) < 0.01


@needs_tools
def test_read_noise_and_trajectory(tmp_path):
    path = tmp_path / "noise.h5"
    subprocess.run(
        [GENERATE, "-m", "32", "-c", "4", "-C", "-k", "-o", str(path)],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    kd = read_mrd(path)
    assert kd.noise is not None
    assert kd.noise.shape[1] == 4
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        first = ds.read_acquisition(0)
        assert first.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        noise_dwell_us = first.sample_time_us
    finally:
        ds.close()
    assert noise_dwell_us > 0
    assert kd.noise_sample_time_s == pytest.approx(noise_dwell_us * 1e-6)  # for prewhitening
    assert kd.n_readouts == 32  # the noise acquisition is not a readout
    assert not bool(kd.has_flag(AcqFlag.IS_NOISE_MEASUREMENT).any())
    assert kd.kspace is not None  # -k stores normalised trajectories: back in 1/m
    fov_x = kd.encoded_fov_m[0]
    u = kd.kspace[: kd.readout_length[0], 0].double() * fov_x
    assert torch.allclose(u, torch.arange(-32, 32, dtype=torch.float64), atol=1e-3)
    assert isinstance(kd.header, ismrmrd.xsd.ismrmrdHeader)


# -- writing simulated data ----------------------------------------------------------------------


def test_sig_to_mrd_header_and_acquisitions(tmp_path, simulated):
    seq, signal = simulated
    path = sig_to_mrd(tmp_path / "sim.h5", signal, seq)
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        header = ismrmrd.xsd.CreateFromDocument(ds.read_xml_header())
        enc = header.encoding[0]
        assert (enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y) == (32, 32)
        assert enc.encodedSpace.fieldOfView_mm.x == pytest.approx(220.0)
        assert enc.encodedSpace.fieldOfView_mm.z == pytest.approx(5.0)
        assert enc.reconSpace.matrixSize.x == 32
        assert enc.trajectory == ismrmrd.xsd.trajectoryType.CARTESIAN
        limits = enc.encodingLimits.kspace_encoding_step_1
        assert (limits.minimum, limits.maximum, limits.center) == (0, 31, 16)
        params = header.sequenceParameters
        assert params.TR[0] == pytest.approx(10.0, rel=1e-3)
        assert params.flipAngle_deg[0] == pytest.approx(15.0, rel=1e-3)
        assert 0 < params.TE[0] < 5.0
        assert header.acquisitionSystemInformation.receiverChannels == 1
        assert ds.number_of_acquisitions() == 32
        acqs = [ds.read_acquisition(i) for i in range(32)]
    finally:
        ds.close()
    assert [a.idx.kspace_encode_step_1 for a in acqs] == list(range(32))
    assert all(a.number_of_samples == 32 and a.center_sample == 16 for a in acqs)
    assert all(a.sample_time_us == pytest.approx(20.0) for a in acqs)
    assert all(a.active_channels == 1 and a.discard_pre == 0 for a in acqs)
    assert acqs[0].is_flag_set(ismrmrd.ACQ_FIRST_IN_SLICE)
    assert acqs[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE)
    assert not acqs[5].is_flag_set(ismrmrd.ACQ_FIRST_IN_SLICE)
    assert np.allclose(acqs[3].data[0], signal[96:128, 0].numpy())


def test_sig_to_mrd_marks_its_data_simulated(tmp_path, simulated):
    """The header says the data are simulated, so their images can be labelled so later."""
    seq, signal = simulated
    path = sig_to_mrd(tmp_path / "sim.h5", signal, seq)
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        xml = ds.read_xml_header()
    finally:
        ds.close()
    assert header_says_simulated(xml)
    header = ismrmrd.xsd.CreateFromDocument(xml)
    header.userParameters = None  # a measured file's header: no mark
    assert not header_says_simulated(ismrmrd.xsd.ToXML(header))
    assert not header_says_simulated(b"not xml")


@needs_tools
def test_sig_to_mrd_reconstructs_with_ismrmrd_tool(tmp_path, simulated):
    seq, signal = simulated
    ours = reco_cartesian(KData.from_sequence(signal, seq))[0, 0, 0, :, :, 0].numpy()
    path = sig_to_mrd(tmp_path / "sim.h5", signal, seq)
    assert nrmse(ours.T, tool_recon(path)) < 0.01


def test_round_trip_equals_in_memory(tmp_path, simulated):
    seq, signal = simulated
    in_memory = reco_cartesian(KData.from_sequence(signal, seq))
    read = read_mrd(sig_to_mrd(tmp_path / "sim.h5", signal, seq))
    assert read.encoded_matrix == (32, 32, 1)
    assert read.kspace is None
    assert torch.allclose(read.signal, signal)
    back = reco_cartesian(read)
    assert float((back - in_memory).abs().max() / in_memory.abs().max()) < 1e-5


def test_sig_to_mrd_accepts_mr0_sequence_and_path(tmp_path, simulated):
    seq, signal = simulated
    seq_path = tmp_path / "flash.seq"
    seq.write(str(seq_path))
    via_path = read_mrd(sig_to_mrd(tmp_path / "a.h5", signal, seq_path))
    mr0_seq = mr0.Sequence.import_file(seq_path)
    via_mr0 = read_mrd(sig_to_mrd(tmp_path / "b.h5", signal, mr0_seq))
    assert torch.equal(via_path.signal, via_mr0.signal)
    assert torch.equal(via_path.idx["LIN"], via_mr0.idx["LIN"])
    with pytest.raises(FileExistsError):
        sig_to_mrd(tmp_path / "b.h5", signal, mr0_seq, overwrite=False)


def test_radial_trajectory_round_trip(tmp_path):
    seq = mr0.Sequence.import_file(CORPUS / "write_radial_gre.seq")
    k = seq.get_kspace()
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(k.shape[0], 2, dtype=torch.complex64, generator=g)
    kd = read_mrd(sig_to_mrd(tmp_path / "radial.h5", signal, seq))
    assert kd.trajectory == "radial"
    with h5py.File(tmp_path / "radial.h5", "r") as f:
        traj = np.asarray(f["dataset/data"][0]["traj"]).reshape(-1, 2)
    assert np.abs(traj).max() <= 0.5 + 1e-3  # ISMRMRD units: k · fov / n
    assert kd.kspace is not None
    assert torch.allclose(kd.kspace[:, :3], k[:, :3], atol=1e-3 * float(k.abs().max()))
    assert torch.equal(kd.signal, signal)


# -- errors ------------------------------------------------------------------------------------


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.h5"):
        read_mrd(tmp_path / "missing.h5")
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(MrdFormatError, match="not an HDF5"):
        read_mrd(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_group("something")
    with pytest.raises(MrdFormatError, match="no group 'dataset'"):
        read_mrd(other)
    empty = tmp_path / "empty.h5"
    ds = ismrmrd.Dataset(str(empty), "dataset", create_if_needed=True)
    header = ismrmrd.xsd.ismrmrdHeader(
        experimentalConditions=ismrmrd.xsd.experimentalConditionsType(H1resonanceFrequency_Hz=1),
    )
    ds.write_xml_header(ismrmrd.xsd.ToXML(header))
    ds.close()
    with pytest.raises(MrdFormatError, match="no acquisitions"):
        read_mrd(empty)


def test_parse_header_equals_ismrmrd_and_refuses_bad_xml():
    from mr0core.io.mrd import parse_header

    xml = (
        '<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
        "<experimentalConditions><H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz>"
        "</experimentalConditions><encoding><encodedSpace><matrixSize><x>64</x><y>32</y>"
        "<z>1</z></matrixSize><fieldOfView_mm><x>200</x><y>100</y><z>5</z></fieldOfView_mm>"
        "</encodedSpace><reconSpace><matrixSize><x>64</x><y>32</y><z>1</z></matrixSize>"
        "<fieldOfView_mm><x>200</x><y>100</y><z>5</z></fieldOfView_mm></reconSpace>"
        "<encodingLimits/><trajectory>radial</trajectory></encoding></ismrmrdHeader>"
    )
    want = ismrmrd.xsd.CreateFromDocument(xml)
    for _ in range(2):  # the second parse runs on the kept context
        got = parse_header(xml)
        assert got == want
        assert got.encoding[0].encodedSpace.fieldOfView_mm.y == 100
    assert parse_header(xml.encode()) == want
    with pytest.raises(Exception, match=r"nknown|bogus"):
        parse_header(xml.replace("<encodingLimits/>", "<bogus>1</bogus><encodingLimits/>"))
    with pytest.raises(Exception, match="unclosed"):  # xsdata's ParserError
        parse_header("<ismrmrdHeader")

"""A simulatable protocol rebuilt from an ISMRMRD header and acquisition headers.

Headers and acquisitions are made in code (``ismrmrd.xsd`` objects, ``ismrmrd.Acquisition``);
the end-to-end test reads the Shepp-Logan raw data that Debian's ismrmrd-tools write
(``ismrmrd_generate_cartesian_shepp_logan``), simulates its protocol on the built-in Shepp-Logan
phantom and reconstructs the simulated samples in place of the measured ones.

Physics is checked against closed forms on one voxel: the spoiled-GRE (Ernst) steady state, the
spin echo's exp(-TE/T2) with T2′ refocused, and inversion recovery 1 - 2 exp(-TI/T1).
"""

from __future__ import annotations

import copy
import math
import shutil
import subprocess

import ismrmrd
import ismrmrd.xsd as xsd
import numpy as np
import pytest
import torch

import mr0core as mr0
from mr0core.io.mrd import kdata_from_acquisitions, parse_header
from mr0core.io.mrd_protocol import MrdProtocol, MrdProtocolError, sequence_from_mrd
from mr0core.phantom.builtin_phantoms import PHANTOMS
from mr0core.recon import KData, reconstruct
from mr0core.recon.kdata import AcqFlag
from mr0core.sequence import PulseUsage
from mr0core.util import simulate

GENERATE = shutil.which("ismrmrd_generate_cartesian_shepp_logan")
NOISE = int(AcqFlag.IS_NOISE_MEASUREMENT)
REVERSE = int(AcqFlag.IS_REVERSE)

# encoded 32 x 16 (x oversampled 2x: recon 16 x 16), FOV 0.4 x 0.2 m encoded
NX, NY, FOV = 32, 16, (0.4, 0.2, 0.005)


def make_header(
    nx: int = NX,
    ny: int = NY,
    nz: int = 1,
    fov: tuple[float, float, float] = FOV,
    *,
    tr=None,
    te=None,
    ti=None,
    flip=None,
    seq_type: str | None = None,
    trajectory: str = "cartesian",
    centre_line: int | None = None,
    centre_partition: int | None = None,
) -> str:
    """ISMRMRD XML: encoded (nx, ny, nz) with x oversampled 2x; TR/TE/TI in s (lists allowed)."""

    def space(matrix, f):
        return xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=matrix[0], y=matrix[1], z=matrix[2]),
            fieldOfView_mm=xsd.fieldOfViewMm(x=f[0] * 1e3, y=f[1] * 1e3, z=f[2] * 1e3),
        )

    limits = {
        "kspace_encoding_step_1": xsd.limitType(
            minimum=0, maximum=ny - 1, center=ny // 2 if centre_line is None else centre_line
        )
    }
    if nz > 1:
        limits["kspace_encoding_step_2"] = xsd.limitType(
            minimum=0,
            maximum=nz - 1,
            center=nz // 2 if centre_partition is None else centre_partition,
        )
    encoding = xsd.encodingType(
        encodedSpace=space((nx, ny, nz), fov),
        reconSpace=space((nx // 2, ny, nz), (fov[0] / 2, fov[1], fov[2])),
        encodingLimits=xsd.encodingLimitsType(**limits),
        trajectory=xsd.trajectoryType(trajectory),
    )

    def ms(value):
        return [] if value is None else [float(v) * 1e3 for v in np.atleast_1d(value)]

    params = xsd.sequenceParametersType(
        TR=ms(tr),
        TE=ms(te),
        TI=ms(ti),
        flipAngle_deg=[] if flip is None else [float(v) for v in np.atleast_1d(flip)],
        sequence_type=seq_type,
    )
    header = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127_728_000),
        encoding=[encoding],
        sequenceParameters=params,
    )
    return xsd.ToXML(header)


def make_acq(
    line: int,
    n: int = NX,
    centre: int = NX // 2,
    dwell_us: float = 10.0,
    flags: int = 0,
    contrast: int = 0,
    partition: int = 0,
    coils: int = 1,
) -> ismrmrd.Acquisition:
    acq = ismrmrd.Acquisition.from_array(np.zeros((coils, n), dtype=np.complex64))
    acq.center_sample = centre
    acq.sample_time_us = dwell_us
    acq.flags = flags
    acq.idx.kspace_encode_step_1 = line
    acq.idx.kspace_encode_step_2 = partition
    acq.idx.contrast = contrast
    return acq


def centre_out(n: int) -> list[int]:
    """Lines n//2, n//2 - 1, n//2 + 1, ... (centre-out ky order)."""
    order = [n // 2]
    for d in range(1, n):
        order += [v for v in (n // 2 - d, n // 2 + d) if 0 <= v < n]
    return order


def expected_kspace(acqs, fov, centre_line, centre_partition=0, nz=1) -> np.ndarray:
    """The header formula: kx = (j - centre)/FOVx (reversed lines mirrored), ky, kz."""
    rows = []
    for a in acqs:
        j = np.arange(a.number_of_samples)
        sign = -1.0 if a.flags & REVERSE else 1.0
        k = np.zeros((j.size, 3))
        k[:, 0] = sign * (j - a.center_sample) / fov[0]
        k[:, 1] = (a.idx.kspace_encode_step_1 - centre_line) / fov[1]
        if nz > 1:
            k[:, 2] = (a.idx.kspace_encode_step_2 - centre_partition) / fov[2]
        rows.append(k)
    return np.concatenate(rows)


def voxel(**kw) -> mr0.CustomVoxelPhantom:
    """One sinc voxel of 5 cm at the isocentre: the spoilers (>= 2 cycles per 12.5 mm encoded
    voxel) dephase it completely, and it fills k-space only near k = 0 (the centre line)."""
    args = {"T1": 1e9, "T2": 1e9, "T2dash": 1e9, "D": 0.0, "voxel_size": 0.05}
    args.update(kw)
    return mr0.CustomVoxelPhantom([[0.0, 0.0, 0.0]], **args)


def centre_samples(protocol: MrdProtocol, acqs, signal: torch.Tensor) -> np.ndarray:
    """Complex signal of the centre sample of every readout (first coil)."""
    blocks = protocol.split_signal(signal)
    return np.array(
        [
            complex(b[0, acqs[i].center_sample])
            for i, b in zip(protocol.acquisitions, blocks, strict=True)
        ]
    )


def readout_times(protocol: MrdProtocol, acqs) -> list[tuple[float, float, float]]:
    """Per readout (time of its excitation, time of its centre sample, time of the inversion
    before it or NaN), in s from the start of the sequence."""
    out, t, t_exc, t_inv = [], 0.0, math.nan, math.nan
    r = 0
    for rep in protocol.seq:
        if rep.pulse.usage is PulseUsage.EXCIT:
            t_exc = t
        if rep.pulse.usage is PulseUsage.UNDEF and float(rep.pulse.angle) > 3.0:
            t_inv = t
        ends = t + np.cumsum(rep.event_time.double().numpy())
        adc = np.flatnonzero(rep.adc_usage.numpy() > 0)
        if adc.size:
            centre = acqs[protocol.acquisitions[r]].center_sample
            out.append((t_exc, float(ends[adc[centre]]), t_inv))
            r += 1
        t = float(ends[-1]) if rep.event_count else t
    return out


# -- k-space -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gre", "se"])
@pytest.mark.parametrize("nz", [1, 4])
def test_kspace_of_every_sample_follows_the_header(kind, nz):
    partitions = [2] if nz == 1 else [2, 0, 3, 1]
    acqs = [make_acq(0, flags=NOISE, n=64)]  # noise: skipped
    for p in partitions:
        acqs += [make_acq(line, partition=p) for line in centre_out(NY)]
    acqs.append(make_acq(3, n=24, centre=5))  # a partial echo
    acqs.append(make_acq(9, flags=REVERSE, centre=15))  # a reversed line
    header = make_header(nz=nz, centre_line=7, centre_partition=1, te=6e-3, tr=20e-3)
    prot = sequence_from_mrd(header, acqs, kind)
    assert prot.kind == kind
    assert prot.acquisitions == list(range(1, len(acqs)))
    k = prot.seq.get_kspace().double().numpy()
    ref = expected_kspace(acqs[1:], FOV, 7, 1, nz)
    assert k.shape == (ref.shape[0], 4)
    np.testing.assert_allclose(k[:, :3], ref, rtol=0, atol=1e-4)
    # one readout per acquisition, as long as it
    assert prot.readout_lengths() == [a.number_of_samples for a in acqs[1:]]
    # tau: the time since the excitation (GRE) or since the spin echo (SE) at the centre sample
    start = np.cumsum([0, *prot.readout_lengths()])[:-1]
    tau_centre = k[start + np.array([a.center_sample for a in acqs[1:]]), 3]
    np.testing.assert_allclose(tau_centre, 6e-3 if kind == "gre" else 0.0, atol=1e-7)


def test_header_xml_and_parsed_header_give_the_same_sequence():
    acqs = [make_acq(line) for line in range(NY)]
    xml = make_header(te=5e-3, tr=15e-3, flip=12.0)
    a = sequence_from_mrd(xml, acqs)
    b = sequence_from_mrd(parse_header(xml), acqs)
    c = sequence_from_mrd(xml.encode(), acqs)
    for other in (b, c):
        assert other.parameters == a.parameters
        assert torch.equal(other.seq.get_kspace(), a.seq.get_kspace())


def test_missing_centre_falls_back_to_half_the_matrix():
    # a centre of 0 with a maximum > 0 is an unset centre (some converters write it)
    acqs = [make_acq(line) for line in range(NY)]
    prot = sequence_from_mrd(make_header(centre_line=0), acqs)
    ref = expected_kspace(acqs, FOV, NY // 2)
    np.testing.assert_allclose(prot.seq.get_kspace()[:, :3].numpy(), ref, atol=1e-4)


def test_labels_let_kdata_from_sequence_see_the_acquisition_counters():
    acqs = [make_acq(line, contrast=c) for c in (0, 1) for line in centre_out(NY)]
    prot = sequence_from_mrd(make_header(te=[4e-3, 8e-3], tr=20e-3), acqs)
    n = sum(prot.readout_lengths())
    kd = KData.from_sequence(torch.zeros(n, 1, dtype=torch.complex64), prot.seq)
    assert kd.idx["LIN"].tolist() == [a.idx.kspace_encode_step_1 for a in acqs]
    assert kd.idx["ECO"].tolist() == [a.idx.contrast for a in acqs]
    assert kd.encoded_matrix == (NX, NY, 1)
    assert kd.recon_matrix == (NX // 2, NY, 1)


# -- timing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gre", "se"])
def test_te_and_tr_are_the_headers(kind):
    te, tr = (3e-3, 12e-3) if kind == "gre" else (15e-3, 0.4)
    acqs = [make_acq(line) for line in centre_out(NY)]
    acqs.append(make_acq(4, n=24, centre=5))  # asymmetric echo: same TE
    prot = sequence_from_mrd(make_header(te=te, tr=tr, flip=30.0), acqs, kind)
    assert prot.parameters == {"TR": tr, "TE": te, "TI": None, "flip": 30.0}
    assert prot.defaulted == []
    times = readout_times(prot, acqs)
    np.testing.assert_allclose([c - e for e, c, _ in times], te, atol=1e-7)
    excitations = np.array([e for e, _, _ in times])
    np.testing.assert_allclose(np.diff(excitations), tr, atol=1e-7)
    assert prot.seq.get_duration() == pytest.approx(len(acqs) * tr, abs=1e-6)
    if kind == "se":  # the refocusing pulse at TE / 2, phase +90° to the excitation
        exc = [rep for rep in prot.seq if rep.pulse.usage is PulseUsage.EXCIT]
        ref = [rep for rep in prot.seq if rep.pulse.usage is PulseUsage.REFOC]
        assert len(exc) == len(ref) == len(acqs)
        for e, r in zip(exc, ref, strict=True):
            assert float(e.event_time.double().sum()) == pytest.approx(te / 2, abs=1e-7)
            assert float(r.pulse.angle) == pytest.approx(math.pi)
            dphase = (float(r.pulse.phase) - float(e.pulse.phase)) % (2 * math.pi)
            assert dphase == pytest.approx(math.pi / 2, abs=1e-5)


def test_te_and_tr_per_contrast_and_inversion_time():
    tes, tr, ti = [4e-3, 9e-3], 0.8, 0.3
    acqs = [make_acq(line, contrast=c) for line in range(4, 12) for c in (0, 1)]
    prot = sequence_from_mrd(make_header(te=tes, tr=tr, ti=ti, flip=20.0), acqs)
    assert prot.parameters["TE"] == {0: tes[0], 1: tes[1]}
    assert prot.parameters["TR"] == tr
    assert prot.parameters["TI"] == ti
    assert any("inversion" in n.lower() for n in prot.notes)
    times = readout_times(prot, acqs)
    for (exc, centre, inv), a in zip(times, acqs, strict=True):
        assert centre - exc == pytest.approx(tes[a.idx.contrast], abs=1e-7)
        assert exc - inv == pytest.approx(ti, abs=1e-7)
    inversions = np.array([inv for _, _, inv in times])
    np.testing.assert_allclose(np.diff(inversions), tr, atol=1e-6)  # TR: inversion to inversion


def test_defaults_are_listed_and_fit_the_readout():
    acqs = [make_acq(line) for line in range(NY)]
    prot = sequence_from_mrd(make_header(), acqs)
    assert prot.kind == "gre"
    assert set(prot.defaulted) == {"TE", "TR", "flip", "sequence_type"}
    assert prot.parameters["flip"] == 15.0
    te, tr = prot.parameters["TE"], prot.parameters["TR"]
    times = readout_times(prot, acqs)
    np.testing.assert_allclose([c - e for e, c, _ in times], te, atol=1e-7)
    # shortest: TE just covers a prephaser and the first half of the readout
    assert (NX // 2 + 1) * 10e-6 < te < (NX // 2 + 1) * 10e-6 + 1e-3
    assert prot.seq.get_duration() == pytest.approx(NY * tr, abs=1e-6)
    se = sequence_from_mrd(make_header(), acqs, "se")
    assert se.parameters["flip"] == 90.0
    assert se.parameters["TR"] == 0.5


def test_too_short_te_and_tr_are_raised_with_a_note():
    acqs = [make_acq(line, dwell_us=20.0) for line in range(NY)]  # centre sample at 0.34 ms
    prot = sequence_from_mrd(make_header(te=0.1e-3, tr=0.2e-3), acqs)
    te, tr = prot.parameters["TE"], prot.parameters["TR"]
    assert te > (NX // 2 + 1) * 20e-6
    assert tr > te + (NX // 2 - 1) * 20e-6
    assert any(n.startswith("TE 0.1 ms") and "raised" in n for n in prot.notes)
    assert any(n.startswith("TR 0.2 ms") and "raised" in n for n in prot.notes)
    times = readout_times(prot, acqs)
    np.testing.assert_allclose([c - e for e, c, _ in times], te, atol=1e-7)
    # feasible but short: the prephaser shrinks, the header TE is kept
    short = sequence_from_mrd(make_header(te=0.35e-3, tr=5e-3), acqs)
    assert short.parameters["TE"] == 0.35e-3
    assert any("prephaser" in n for n in short.notes)


@pytest.mark.parametrize(
    ("seq_type", "kind"),
    [("TurboSpinEcho", "se"), ("SE", "se"), ("spin echo", "se"), ("Flash", "gre"),
     ("GRE", "gre"), ("gradient echo", "gre"), ("EPI", "gre")],
)  # fmt: skip
def test_kind_from_sequence_type(seq_type, kind):
    acqs = [make_acq(line) for line in range(4)]
    prot = sequence_from_mrd(make_header(seq_type=seq_type), acqs)
    assert prot.kind == kind
    assert "sequence_type" not in prot.defaulted
    assert sequence_from_mrd(make_header(seq_type=seq_type), acqs, "gre").kind == "gre"


def test_dummy_scans_add_repetitions_without_adc():
    acqs = [make_acq(line) for line in range(NY)]
    plain = sequence_from_mrd(make_header(te=4e-3, tr=10e-3), acqs)
    dummies = sequence_from_mrd(make_header(te=4e-3, tr=10e-3), acqs, dummy_scans=5)
    assert len(dummies.seq) == len(plain.seq) + 5
    assert all(int(rep.adc_usage.sum()) == 0 for rep in dummies.seq[:5])
    assert torch.equal(dummies.seq.get_kspace(), plain.seq.get_kspace())


def test_large_protocol_builds():
    # 256 lines of 512 samples (built in about 0.1 s; timing belongs in benchmarks, not here)
    acqs = [make_acq(line, n=512, centre=256, dwell_us=5.0) for line in range(256)]
    prot = sequence_from_mrd(make_header(512, 256, fov=(0.5, 0.25, 0.005)), acqs)
    assert prot.seq.get_kspace().shape == (256 * 512, 4)


# -- physics -------------------------------------------------------------------------------------


def test_gre_steady_state_is_the_spoiled_ernst_signal():
    t1, t2, t2dash = 0.2, 0.04, 0.02
    tr, te, flip = 10e-3, 4e-3, 20.0
    acqs = [make_acq(line) for _ in range(12) for line in range(NY)]  # 192 TRs ≈ 10 T1
    prot = sequence_from_mrd(make_header(te=te, tr=tr, flip=flip), acqs)
    signal, _ = simulate(prot.seq, voxel(T1=t1, T2=t2, T2dash=t2dash))
    s = centre_samples(prot, acqs, signal)
    centre = np.array([a.idx.kspace_encode_step_1 == NY // 2 for a in acqs])
    steady = s[centre][4:]  # from 72 TRs (7 T1) on
    e1, a = math.exp(-tr / t1), math.radians(flip)
    t2star = 1 / (1 / t2 + 1 / t2dash)
    ernst = math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * math.exp(-te / t2star)
    np.testing.assert_allclose(np.abs(steady), ernst, rtol=0.02)
    # RF spoiling with the ADC following the pulse phase: the signal keeps one phase
    np.testing.assert_allclose(np.angle(steady), np.angle(steady[0]), atol=0.02)
    assert abs(np.angle(steady[0])) < 0.2  # about real and positive


def test_se_follows_t2_and_refocuses_t2dash():
    t2 = 0.05
    acqs = [make_acq(NY // 2) for _ in range(3)]
    results = {}
    for t2dash in (1e9, 5e-3):
        for te in (20e-3, 60e-3):
            prot = sequence_from_mrd(make_header(te=te, tr=2.0, seq_type="SE"), acqs)
            assert prot.kind == "se"
            signal, _ = simulate(prot.seq, voxel(T1=0.1, T2=t2, T2dash=t2dash))
            s = centre_samples(prot, acqs, signal)
            # TR ≫ T1: full recovery, 90° excitation, signal exp(-TE/T2), real and positive
            np.testing.assert_allclose(s.real, math.exp(-te / t2), rtol=1e-3)
            np.testing.assert_allclose(s.imag, 0.0, atol=1e-3)
            results[t2dash, te] = s
    np.testing.assert_allclose(results[5e-3, 60e-3], results[1e9, 60e-3], rtol=1e-4)
    # a GRE at the same TE loses the signal to T2′
    gre = sequence_from_mrd(make_header(te=20e-3, tr=2.0, flip=90.0), acqs, "gre")
    s = centre_samples(gre, acqs, simulate(gre.seq, voxel(T1=0.1, T2=t2, T2dash=5e-3))[0])
    assert np.abs(s).max() < 0.05 * math.exp(-20e-3 / t2)


def test_se_steady_state_at_short_tr_is_perfectly_spoiled():
    """TR = T2: without spoiling, coherences of earlier TRs would return (a constant spoiler
    moment lets the next refocusing pulse mirror them back to k = 0: 5 % too little signal)."""
    t1, t2, te, tr = 0.5, 0.1, 20e-3, 0.1
    acqs = [make_acq(NY // 2) for _ in range(40)]
    prot = sequence_from_mrd(make_header(te=te, tr=tr, seq_type="SE"), acqs)
    s = centre_samples(prot, acqs, simulate(prot.seq, voxel(T1=t1, T2=t2, T2dash=0.01))[0])
    # Mz before each excitation: 1 - 2 exp(-(TR - TE/2)/T1) + exp(-TR/T1) (inverted at TE/2)
    mz = 1 - 2 * math.exp(-(tr - te / 2) / t1) + math.exp(-tr / t1)
    np.testing.assert_allclose(np.abs(s[-20:]), mz * math.exp(-te / t2), rtol=5e-3)


@pytest.mark.parametrize("ti", [0.05, 0.3])
def test_inversion_recovery_signal(ti):
    t1, t2, te = 0.2, 0.1, 20e-3
    acqs = [make_acq(NY // 2) for _ in range(2)]
    prot = sequence_from_mrd(make_header(te=te, tr=3.0, ti=ti, seq_type="SE"), acqs)
    s = centre_samples(prot, acqs, simulate(prot.seq, voxel(T1=t1, T2=t2))[0])
    expected = (1 - 2 * math.exp(-ti / t1)) * math.exp(-te / t2)  # signed: phase-sensitive
    np.testing.assert_allclose(s.real, expected, rtol=2e-3, atol=1e-4)
    ignored = sequence_from_mrd(make_header(te=te, tr=3.0, ti=ti), acqs, inversion=False)
    assert ignored.parameters["TI"] is None
    assert not any(float(r.pulse.angle) > 3 for r in ignored.seq)


# -- ISMRMRD's Shepp-Logan raw data --------------------------------------------------------------


@pytest.mark.skipif(
    GENERATE is None, reason="ismrmrd_generate_cartesian_shepp_logan (ismrmrd-tools) is missing"
)
def test_shepp_logan_raw_data_resimulated_and_reconstructed(tmp_path):
    path = tmp_path / "shepp.h5"
    subprocess.run(
        [GENERATE, "-m", "64", "-c", "2", "-o", str(path)], cwd=tmp_path, check=True,
        capture_output=True,
    )  # fmt: skip
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        xml = dset.read_xml_header()
        acqs = [dset.read_acquisition(i) for i in range(dset.number_of_acquisitions())]
    finally:
        dset.close()
    xml = xml.decode() if isinstance(xml, bytes) else xml

    prot = sequence_from_mrd(xml, acqs)
    assert prot.kind == "gre"
    assert {"TE", "TR", "flip"} <= set(prot.defaulted)  # the file has no sequenceParameters
    assert prot.acquisitions == list(range(len(acqs)))

    phantom = PHANTOMS["shepp-logan"](size=32, coils=2)
    signal, _ = simulate(prot.seq, phantom)
    assert signal.shape == (sum(a.number_of_samples for a in acqs), 2)
    replaced = []
    for r, block in zip(prot.acquisitions, prot.split_signal(signal), strict=True):
        acq = copy.deepcopy(acqs[r])
        assert tuple(block.shape) == acq.data.shape  # [coils, samples]
        acq.data[:] = block.numpy()
        replaced.append(acq)
    rec = reconstruct(kdata_from_acquisitions(xml, replaced))
    image = rec.image[0, 0, 0, :, :, 0].numpy()
    assert rec.matrix == (64, 64, 1)
    assert np.isfinite(image).all()
    assert image.max() > 0

    # the energy lies where the phantom is (its PD > 0 voxels, plus one image voxel)
    grid = phantom.combine()
    n, size = grid.PD.shape[0], float(grid.size[0])
    pos = (np.arange(n) - n // 2) * size / n
    occupied = grid.PD[:, :, 0].numpy() > 0
    margin = rec.fov_m[0] / rec.matrix[0]
    xs, ys = pos[occupied.any(axis=1)], pos[occupied.any(axis=0)]
    xi = (np.arange(64) - 32) * rec.fov_m[0] / 64
    yi = (np.arange(64) - 32) * rec.fov_m[1] / 64
    inside = ((xi >= xs.min() - margin) & (xi <= xs.max() + margin))[:, None] & (
        (yi >= ys.min() - margin) & (yi <= ys.max() + margin)
    )[None, :]
    assert inside.mean() < 0.75  # the test means something: the box is not the whole FOV
    energy = image**2
    assert energy[inside].sum() > 0.9 * energy.sum()

    # the acquisitions place the samples where the sequence's own k-space does
    direct = reconstruct(KData.from_sequence(signal, prot.seq)).image[0, 0, 0, :, :, 0].numpy()
    np.testing.assert_allclose(image, direct, rtol=0, atol=1e-4 * image.max())


# -- errors --------------------------------------------------------------------------------------


def test_non_cartesian_header_is_refused():
    acqs = [make_acq(line) for line in range(4)]
    with pytest.raises(ValueError, match="trajectory is 'radial'"):
        sequence_from_mrd(make_header(trajectory="radial"), acqs)
    with pytest.raises(ValueError, match="trajectory is 'epi'"):
        sequence_from_mrd(make_header(trajectory="epi"), acqs)


def test_no_imaging_acquisitions_is_refused():
    with pytest.raises(ValueError, match="no imaging acquisitions: 2 given, 2 noise"):
        sequence_from_mrd(make_header(), [make_acq(0, flags=NOISE), make_acq(0, flags=NOISE)])
    with pytest.raises(ValueError, match="no imaging acquisitions: 0 given"):
        sequence_from_mrd(make_header(), [])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"n": 0, "centre": 0}, "acquisition 1 has 0 samples"),
        ({"dwell_us": 0.0}, r"acquisition 1 has a dwell time \(sample_time_us\) <= 0"),
        ({"dwell_us": -5.0}, r"acquisition 1 has a dwell time \(sample_time_us\) <= 0"),
        ({"n": 8, "centre": 8}, "acquisition 1 has its center_sample beyond"),
    ],
)
def test_nonsensical_sizes_are_refused(args, message):
    with pytest.raises(MrdProtocolError, match=message):
        sequence_from_mrd(make_header(), [make_acq(2), make_acq(3, **args)])


def test_other_bad_inputs():
    acqs = [make_acq(line) for line in range(4)]
    bare = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=1)
    )
    with pytest.raises(ValueError, match="no encoding section"):
        sequence_from_mrd(bare, acqs)
    with pytest.raises(ValueError, match="does not parse"):
        sequence_from_mrd("<ismrmrdHeader><nonsense/>", acqs)
    with pytest.raises(ValueError, match="field of view along y"):
        sequence_from_mrd(make_header(fov=(0.4, 0.0, 0.005)), acqs)
    with pytest.raises(ValueError, match="kind must be"):
        sequence_from_mrd(make_header(), acqs, "epi")
    with pytest.raises(ValueError, match="inversion=True, but the header gives no TI"):
        sequence_from_mrd(make_header(), acqs, inversion=True)
    with pytest.raises(TypeError, match="acquisition 1 is a dict"):
        sequence_from_mrd(make_header(), [acqs[0], {}])
    prot = sequence_from_mrd(make_header(), acqs)
    with pytest.raises(ValueError, match=r"signal must be \[128, coils\]"):
        prot.split_signal(torch.zeros(127, 1, dtype=torch.complex64))

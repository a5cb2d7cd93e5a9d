"""The ASL preview chain (``mr0_asl``) through the server: three series, CBF, errors."""

from __future__ import annotations

import base64
import json
import socket
import tempfile
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from gadgets.library.asl import CBF_SERIES, CONTROL_SERIES, LABEL_SERIES, PREVIEW_MATRIX
from gadgets.wire.framing import MessageId, MessageReader, MessageWriter
from mr0core.io.mrd_images import image_array
from mr0core.jobs import build_demo_flash
from mr0core.perfusion.dro import GroundTruth, acquisition_affine, load_params, resample


def session(port: int, params: dict) -> list:
    """Run one ``mr0_asl`` session; return every message of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        writer = MessageWriter(sock)
        writer.write_config_file("mr0_asl")
        writer.write_text(json.dumps(params))
        writer.write_close()
        return list(MessageReader(sock))


def _series(msgs: list, engine: str = "analytic") -> dict[str, np.ndarray]:
    """SeriesDescription -> [x, y, z] volume (slices in order), checking each image's meta."""
    out: dict[str, list] = {}
    for m in msgs:
        if m.id != MessageId.IMAGE:
            continue
        meta = ismrmrd.Meta.deserialize(m.value.attribute_string)
        assert meta["MR0Simulated"] == "true"
        assert meta["MR0Engine"] == engine
        out.setdefault(meta["SeriesDescription"], []).append(m.value)
    vols = {}
    for name, images in out.items():
        images.sort(key=lambda im: im.slice)
        assert [im.slice for im in images] == list(range(len(images)))
        assert len({im.image_series_index for im in images}) == 1
        vols[name] = np.stack([image_array(im)[:, :, 0] for im in images], axis=-1)
    return vols


def _purity(label: int, p: dict) -> np.ndarray:
    """Fraction of ``label`` in each acquisition voxel, resampled as the DRO's volumes are."""
    gt = GroundTruth.brain("3T")
    mask = (gt.seg == label).astype(np.float32)
    return resample(mask, gt.affine, acquisition_affine(p), tuple(p["acquisition_matrix"]),
                    p["rotation"][0], p["translation"][0])  # fmt: skip


def test_three_series_and_cbf_of_the_ground_truth(server):
    """Noise off, GKM in the white paper's form: CBF of pure GM / WM voxels is 60 / 20."""
    before = set(Path(tempfile.gettempdir()).glob("mr0-asl-*"))
    asl = {"label_type": "pcasl", "gkm_model": "whitepaper"}
    msgs = session(server.address[1], {"asl": asl, "series_index": 7})
    assert msgs[-1].id == MessageId.CLOSE
    texts = [m.value for m in msgs if m.id == MessageId.TEXT]
    assert not any(t.startswith("ERROR") for t in texts), texts
    assert json.loads(texts[0])["engine"] == "analytic"
    vols = _series(msgs)
    assert set(vols) == {CONTROL_SERIES, LABEL_SERIES, CBF_SERIES}
    indices = {
        ismrmrd.Meta.deserialize(m.value.attribute_string)["SeriesDescription"]: (
            m.value.image_series_index
        )
        for m in msgs
        if m.id == MessageId.IMAGE
    }
    assert indices == {CONTROL_SERIES: 7, LABEL_SERIES: 8, CBF_SERIES: 9}
    assert set(Path(tempfile.gettempdir()).glob("mr0-asl-*")) <= before  # private folder gone
    for v in vols.values():
        assert v.shape == tuple(PREVIEW_MATRIX)
    control, label, cbf = vols[CONTROL_SERIES], vols[LABEL_SERIES], vols[CBF_SERIES]
    brain = control > 0
    assert brain.sum() > 500
    # the label lowers the signal a little where blood flows (not in CSF)
    assert np.all(control[brain] >= label[brain])
    assert (control[brain] > label[brain]).mean() > 0.8
    p = load_params({"pipelines": [{"kind": "asl", "acquisition_matrix": PREVIEW_MATRIX}]})
    p = p["pipelines"][0]
    pure = {tissue: _purity(tissue, p) > 0.9999 for tissue in (1, 2)}
    for tissue, value in ((1, 60.0), (2, 20.0)):
        assert pure[tissue].sum() > 100
        np.testing.assert_allclose(cbf[pure[tissue]], value, rtol=0.01)
    # negative control: data of the full GKM (the default; arrival and T1 effects) quantified
    # by the white paper's formula miss grey matter's 60 by far more than 1 %
    full = _series(session(server.address[1], {"asl": {"label_type": "pcasl"}}))[CBF_SERIES]
    assert abs(np.median(full[pure[1]]) / 60.0 - 1) > 0.1


def test_bad_parameters_give_error_and_the_server_serves_on(server):
    port = server.address[1]
    for params, words in (
        ({"asl": {"label_type": "fair"}}, "asl: label_type must be one of"),
        ({"asl": {"post_labeling_delay": -1}}, "post_labeling_delay"),
        ({"asl": {"nonsense": 1}}, "unknown keys"),
        ({"asl": {"seq": "/etc/passwd"}}, "asl.seq is not taken"),
        ({"asl": {"engine": "pdg"}}, "engine"),
        ({"asl": {"asl_context": ["control", "label"], "repetition_time": 5.0}}, "m0scan"),
        ({"asl": {"acquisition_matrix": [512, 512, 64]}}, "voxels"),
    ):
        msgs = session(port, params)
        errors = [m.value for m in msgs if m.id == MessageId.TEXT and m.value.startswith("ERROR")]
        assert len(errors) == 1, (params, errors)
        assert words in errors[0], (params, errors)
        assert not any(m.id == MessageId.IMAGE for m in msgs)
    # still serving: a PASL run (QUIPSS II, two pairs) gives its three series, GM at 60
    context = ["m0scan", "control", "label", "control", "label"]
    asl = {"label_type": "pasl", "bolus_cut_off_flag": True, "bolus_cut_off_delay_time": 0.8,
           "post_labeling_delay": 1.8, "repetition_time": [10.0, 5.0, 5.0, 5.0, 5.0],
           "asl_context": context, "gkm_model": "whitepaper"}  # fmt: skip
    msgs = session(port, {"asl": asl})
    vols = _series(msgs)
    assert set(vols) == {CONTROL_SERIES, LABEL_SERIES, CBF_SERIES}
    meta = [ismrmrd.Meta.deserialize(m.value.attribute_string) for m in msgs
            if m.id == MessageId.IMAGE]  # fmt: skip
    assert {x["MR0AslVolumes"] for x in meta if "MR0AslVolumes" in x} == {"2"}
    p = load_params({"pipelines": [{"kind": "asl", "acquisition_matrix": PREVIEW_MATRIX}]})
    gm = _purity(1, p["pipelines"][0]) > 0.9999
    np.testing.assert_allclose(vols[CBF_SERIES][gm], 60.0, rtol=0.01)


def test_pdg_engine_from_the_sessions_seq(server, tmp_path):
    """With a readout (seq_b64) the PDG engine runs; pure GM / WM medians within 5 %."""
    path = tmp_path / "gre32.seq"
    build_demo_flash(32, 0.22).write(str(path))
    asl = {"gkm_model": "whitepaper", "acquisition_matrix": [32, 32, 1],
           "fov_mm": [220.0, 220.0, 5.0]}  # fmt: skip
    b64 = base64.b64encode(path.read_bytes()).decode()
    msgs = session(server.address[1], {"asl": asl, "seq_b64": b64})
    texts = [m.value for m in msgs if m.id == MessageId.TEXT]
    assert not any(t.startswith("ERROR") for t in texts), texts
    vols = _series(msgs, engine="pdg")
    p = load_params({"pipelines": [{"kind": "asl", **asl}]})["pipelines"][0]
    for tissue, value in ((1, 60.0), (2, 20.0)):
        pure = _purity(tissue, p) > 0.9999
        assert pure.sum() > 50
        assert np.median(vols[CBF_SERIES][pure]) == pytest.approx(value, rel=0.05)
    # a readout that does not parse is the session's error
    bad = base64.b64encode(b"[VERSION]\nmajor 1\n[BLOCKS]\n1 2 3\n").decode()
    msgs = session(server.address[1], {"asl": asl, "seq_b64": bad})
    errors = [m.value for m in msgs if m.id == MessageId.TEXT and m.value.startswith("ERROR")]
    assert len(errors) == 1
    assert not any(m.id == MessageId.IMAGE for m in msgs)

"""The digital-twin preview chain (``mr0_preview``) through the server, end to end.

The reference is the ``mr0 simulate … --recon`` command on the same sequence and settings, run in
the same test.
"""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import ismrmrd
import nibabel as nib
import numpy as np
import pytest
from conftest import CORPUS, mr0_server, preview

from gadgets.library.preview import PREVIEW_SERIES
from gadgets.wire.framing import MessageId
from mr0core.cli import main as mr0_main
from mr0core.io.mrd_images import image_array


def test_preview_equals_mr0_simulate_recon(server, tmp_path):
    seq = CORPUS / "write_gre.seq"
    params = {"seq": seq.read_text(), "phantom": "brain", "size": 32, "accuracy": 1e-3,
              "progress_s": 0}  # fmt: skip
    msgs = preview(server.address[1], params)
    assert msgs[-1].id == MessageId.CLOSE
    texts = [m.value for m in msgs if m.id == MessageId.TEXT]
    assert not any(t.startswith("ERROR") for t in texts), texts
    progress = [json.loads(t) for t in texts]
    assert progress[0]["status"] == "simulating"
    assert any("done" in p for p in progress)  # progress while it ran
    # progress_s 0: a text per progress message, not one per turn of a loop (that flooded the
    # socket with thousands and took the preview from 0.6 s to 20 s)
    assert len(progress) <= 2 + 65 + 2
    images = [m.value for m in msgs if m.id == MessageId.IMAGE]
    assert len(images) == 1
    image = images[0]
    meta = ismrmrd.Meta.deserialize(image.attribute_string)
    assert meta["SeriesDescription"] == PREVIEW_SERIES
    assert meta["MR0Phantom"] == "builtin:brain"

    out = tmp_path / "ref.nii.gz"
    # the preview's settings: its "accuracy" is the main-pass thresholds (MR-zero's meaning)
    assert mr0_main(["simulate", str(seq), "--phantom", "brain", "--size", "32",
                     "--max-states", "200", "--min-state-mag", "1e-4", "--min-emitted", "1e-3",
                     "--min-latent", "1e-3", "--out", str(tmp_path / "sig.npy"),
                     "--recon", str(out)]) == 0  # fmt: skip
    ref = np.asarray(nib.load(out).get_fdata(), np.float32)
    got = image_array(image)[..., 0]
    assert got.shape == ref.shape[:2]
    np.testing.assert_allclose(got, ref.reshape(got.shape), rtol=1e-4, atol=1e-4 * ref.max())


def test_preview_from_base64_returns_raw_acquisitions(server):
    seq = CORPUS / "write_gre.seq"
    params = {"seq_b64": base64.b64encode(seq.read_bytes()).decode(), "phantom": "shepp-logan",
              "size": 16, "coils": 2, "return_raw": True}  # fmt: skip
    msgs = preview(server.address[1], params)
    acqs = [m.value for m in msgs if m.id == MessageId.ACQUISITION]
    images = [m.value for m in msgs if m.id == MessageId.IMAGE]
    assert len(images) == 1
    assert len(acqs) > 0
    assert {a.active_channels for a in acqs} == {2}
    lines = sorted(a.idx.kspace_encode_step_1 for a in acqs)
    assert lines == list(range(len(acqs)))  # one line per acquisition, in the header's counters


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"seq": "[VERSION]\nmajor 1\nminor 4\n[BLOCKS]\n1 1 7 0 0 0 0 0\n"}, "does not parse"),
        ({}, "no sequence"),
        ({"seq_b64": "%%%"}, "base64"),
        ({"seq": "x", "phantom": "../../etc/passwd"}, "plain name"),
        ({"seq": "x", "phantom": "nosuch"}, "no phantom"),
        ({"seq": "x", "size": 100000}, "size"),
        ({"seq": "x", "rf_model": "bloch"}, "property 'rf_model' = 'bloch': expected one of"),
        ({"seq": "x", "rf_model": "shaped", "sub_slices": 33}, "'sub_slices' = 33: above"),
        ({"seq": "x", "rf_model": "shaped", "sub_slices": 0}, "'sub_slices' = 0: below"),
        ({"seq": "x", "sub_slices": 4}, "'sub_slices' applies to rf_model 'shaped'"),
    ],
)
def test_bad_preview_jobs_get_error_and_the_server_stays_up(server, params, message):
    if "seq" in params and params["seq"] == "x":
        params["seq"] = (CORPUS / "write_gre.seq").read_text()
    msgs = preview(server.address[1], params)
    texts = [m.value for m in msgs if m.id == MessageId.TEXT]
    assert texts
    assert texts[-1].startswith("ERROR"), texts
    assert message in texts[-1]
    assert msgs[-1].id == MessageId.CLOSE
    # the next session is served
    ok = preview(server.address[1], {"seq": (CORPUS / "write_gre.seq").read_text(), "size": 8})
    assert any(m.id == MessageId.IMAGE for m in ok)


def test_preview_uses_a_phantom_from_the_server_folder(tmp_path):
    from mr0core.phantom.builtin_phantoms import write_phantom

    json_path, _ = write_phantom("shepp-logan", tmp_path / "twins", size=16)
    with mr0_server(phantoms_dir=json_path.parent, idle_timeout_s=60, shutdown_grace_s=5) as srv:
        seq = (CORPUS / "write_gre.seq").read_text()
        msgs = preview(srv.address[1], {"seq": seq, "phantom": json_path.stem, "size": 16})
        images = [m.value for m in msgs if m.id == MessageId.IMAGE]
        assert len(images) == 1
        assert ismrmrd.Meta.deserialize(images[0].attribute_string)["MR0Phantom"] == json_path.name
        other = preview(srv.address[1], {"seq": seq, "phantom": "absent"})
        assert json_path.stem in other[-2].value  # the error lists what the folder holds


def test_client_preview_mode(server, tmp_path, capsys):
    from gadgets.wire.client import main as client_main
    from mr0core.io.mrd_images import read_mrd_images

    seq = CORPUS / "write_gre.seq"
    out = tmp_path / "preview.h5"
    argv = ["--preview", str(seq), "--phantom", "shepp-logan", "--size", "16", "-p",
            str(server.address[1]), "-o", str(out)]  # fmt: skip
    assert client_main(argv) == 0
    assert '"status": "simulating"' in capsys.readouterr().out  # progress printed
    (got,) = read_mrd_images(out)
    msgs = preview(server.address[1], {"seq": seq.read_text(), "phantom": "shepp-logan",
                                       "size": 16})  # fmt: skip
    direct = [m.value for m in msgs if m.id == MessageId.IMAGE]
    np.testing.assert_array_equal(image_array(got), image_array(direct[0]))
    assert client_main(["--preview", str(tmp_path / "none.seq"), "-o", str(out)]) == 2


def _header(position: str, fov_mm: float) -> str:
    return (
        '<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
        f"<measurementInformation><patientPosition>{position}</patientPosition>"
        "</measurementInformation><experimentalConditions><H1resonanceFrequency_Hz>127000000"
        "</H1resonanceFrequency_Hz></experimentalConditions><encoding><encodedSpace><matrixSize>"
        f"<x>64</x><y>64</y><z>1</z></matrixSize><fieldOfView_mm><x>{fov_mm}</x><y>{fov_mm}</y>"
        "<z>5</z></fieldOfView_mm></encodedSpace><reconSpace><matrixSize><x>64</x><y>64</y>"
        f"<z>1</z></matrixSize><fieldOfView_mm><x>{fov_mm}</x><y>{fov_mm}</y><z>5</z>"
        "</fieldOfView_mm></reconSpace><encodingLimits/><trajectory>cartesian</trajectory>"
        "</encoding></ismrmrdHeader>"
    )


def test_place_twin_turns_and_stretches():
    import torch

    from gadgets.framework.core import GadgetError
    from gadgets.library.preview import place_twin
    from mr0core.io.mrd import parse_header
    from mr0core.jobs import load_job_phantom

    phantom, _ = load_job_phantom("brain", 16, 1)
    pd = next(iter(phantom.values())).PD
    mirror_x = (-torch.arange(16)) % 16
    placed, meta = place_twin(phantom, parse_header(_header("FFS", 300)))
    tissue = next(iter(placed.values()))
    assert torch.equal(tissue.PD, pd[mirror_x])  # feet first: left and right swap
    assert tissue.size[:2].tolist() == pytest.approx([0.3, 0.3])
    assert meta == {"MR0PatientPosition": "FFS", "MR0TwinSize_mm": "300 300"}
    placed, _ = place_twin(phantom, parse_header(_header("HFP", 300)), match_fov=False)
    tissue = next(iter(placed.values()))
    assert torch.equal(tissue.PD, pd[mirror_x][:, mirror_x])  # prone: a half turn
    assert torch.equal(tissue.size, next(iter(phantom.values())).size)
    placed, _ = place_twin(phantom, parse_header(_header("HFDR", 300)), match_fov=False)
    assert torch.equal(next(iter(placed.values())).PD, pd.transpose(0, 1)[mirror_x])
    with pytest.raises(GadgetError, match="patientPosition"):
        place_twin(phantom, SimpleNamespace(measurementInformation=SimpleNamespace(
            patientPosition="UPSIDE_DOWN")))  # fmt: skip


def test_preview_with_header_places_the_twin(server):
    seq = (CORPUS / "write_gre.seq").read_text()
    job = {"seq": seq, "phantom": "brain", "size": 32, "match_fov": False}

    def image(header: str | None, **extra) -> np.ndarray:
        msgs = preview(server.address[1], {**job, **extra}, header)
        (img,) = [m.value for m in msgs if m.id == MessageId.IMAGE]
        return image_array(img)[..., 0]

    plain = image(None)
    n = plain.shape[0]
    mirrored = plain[(-np.arange(n)) % n]
    ffs = image(_header("FFS", 220))
    corr = np.corrcoef(ffs.ravel(), mirrored.ravel())[0, 1]
    assert corr > 0.99
    assert corr > np.corrcoef(ffs.ravel(), plain.ravel())[0, 1] + 0.05
    np.testing.assert_allclose(image(_header("HFS", 220)), plain, rtol=1e-5, atol=1e-6)
    # stretched to a 120 mm FOV the brain covers about a quarter of the area it did
    small = image(_header("HFS", 120), match_fov=True)
    area = lambda a: (a > 0.2 * a.max()).sum()  # noqa: E731
    assert 0.15 < area(small) / area(plain) < 0.4


def test_rf_model_names_agree_with_the_simulator():
    from gadgets.library.preview import MAX_SUB_SLICES as TWIN_MAX
    from gadgets.library.preview import RF_MODELS
    from mr0core.sim.shaped import MAX_SUB_SLICES as SIM_MAX
    from mr0core.sim.shaped import RF_MODELS as SIM_MODELS
    from scheduler.functions import MAX_SUB_SLICES as JOB_MAX
    from scheduler.functions import RF_MODELS as JOB_MODELS

    assert RF_MODELS == SIM_MODELS == JOB_MODELS
    # a job takes every number the automatic choice makes; a client may ask for fewer
    assert JOB_MAX == SIM_MAX >= TWIN_MAX


def test_the_retro_chain_takes_and_checks_the_rf_parameters():
    from gadgets.framework.core import ChainError, Context
    from gadgets.library.retro import RetroSimGadget

    gadget = RetroSimGadget(Context(), rf_model="shaped", sub_slices=3)
    assert (gadget.props["rf_model"], gadget.props["sub_slices"]) == ("shaped", 3)
    with pytest.raises(ChainError, match="property 'rf_model' = 'exact': expected one of"):
        RetroSimGadget(Context(), rf_model="exact")
    with pytest.raises(ChainError, match="'sub_slices' applies to rf_model 'shaped'"):
        RetroSimGadget(Context(), sub_slices=3)


def test_shaped_preview_equals_mr0_simulate_and_differs_from_instantaneous(server, tmp_path):
    """The preview's rf_model reaches the simulation: it is ``mr0 simulate --rf-model shaped``."""
    seq = CORPUS / "write_gre.seq"
    job = {"seq": seq.read_text(), "phantom": "brain", "size": 16}

    def image(**extra) -> tuple[np.ndarray, dict]:
        msgs = preview(server.address[1], {**job, **extra})
        texts = [m.value for m in msgs if m.id == MessageId.TEXT]
        assert not any(t.startswith("ERROR") for t in texts), texts
        (img,) = [m.value for m in msgs if m.id == MessageId.IMAGE]
        return image_array(img)[..., 0], ismrmrd.Meta.deserialize(img.attribute_string)

    shaped, meta = image(rf_model="shaped")
    assert meta["MR0RfModel"] == "shaped"
    plain, meta = image()
    assert meta["MR0RfModel"] == "instantaneous"
    # write_gre excites a 3 mm slice (FWHM, `mr0 rf-profile`) of the 5 mm thick twin: about
    # 3/5 of the signal (plus the profile's flanks) instead of all of it
    change = np.linalg.norm(shaped - plain) / np.linalg.norm(plain)
    assert change > 0.05, change
    assert 0.55 < shaped.sum() / plain.sum() < 0.75

    out = tmp_path / "ref.nii.gz"
    assert mr0_main(["simulate", str(seq), "--phantom", "brain", "--size", "16",
                     "--max-states", "200", "--min-state-mag", "1e-4", "--min-emitted", "1e-3",
                     "--min-latent", "1e-3", "--rf-model", "shaped",
                     "--out", str(tmp_path / "sig.npy"), "--recon", str(out)]) == 0  # fmt: skip
    ref = np.asarray(nib.load(out).get_fdata(), np.float32).reshape(shaped.shape)
    np.testing.assert_allclose(shaped, ref, rtol=1e-4, atol=1e-4 * ref.max())
    # an explicit sub_slices reaches it too: one sub-slice sits at the centre of the slice,
    # where the sinc rotates like the instantaneous pulse
    one, _ = image(rf_model="shaped", sub_slices=1)
    assert np.linalg.norm(one - plain) / np.linalg.norm(plain) < 1e-3


def test_shaped_preview_in_the_session_thread():
    """Without a scheduler (``--no-scheduler``) rf_model and sub_slices reach the simulation."""
    from gadgets.framework.core import Context
    from gadgets.library.preview import TwinPreviewGadget

    seq = (CORPUS / "write_gre.seq").read_text()

    def image(**props) -> np.ndarray:
        gadget = TwinPreviewGadget(Context(), seq=seq, size=8, progress_s=0, **props)
        (img,) = [i for i in gadget.preview() if isinstance(i, ismrmrd.Image)]
        assert (
            ismrmrd.Meta.deserialize(img.attribute_string)["MR0RfModel"] == gadget.props["rf_model"]
        )
        return image_array(img)[..., 0]

    plain = image()
    shaped = image(rf_model="shaped")
    centre = image(rf_model="shaped", sub_slices=1)
    assert 0.55 < shaped.sum() / plain.sum() < 0.75  # a 3 mm slice of a 5 mm twin
    assert np.linalg.norm(centre - plain) / np.linalg.norm(plain) < 1e-3


def test_the_sequence_call_counts_sub_slices_in_its_estimate():
    """prepare_seq resolves the automatic sub-slices and estimates that many voxels more."""
    from mr0core.jobs import load_job_phantom
    from mr0core.pulseq import read_seq_text, seq_to_sequence
    from mr0core.sim.shaped import default_sub_slices
    from scheduler.estimate import estimate_simulation_from_sequence
    from scheduler.functions import run_call

    text = (CORPUS / "write_gre.seq").read_text()
    data = load_job_phantom("brain", 8, 1)[0].build()
    base = {"voxels": int(data.voxel_count), "coils": 1, "tx": 1, "max_states": 200}

    def prepare(**extra) -> dict:
        out = run_call("prepare_seq", {"text": text, "phantom": data}, {**base, **extra}, "cpu")
        return out["summary"]

    seq = seq_to_sequence(read_seq_text(text, "x"))
    expected = default_sub_slices(seq, data)
    assert expected > 1  # write_gre's sinc across the twin's 5 mm
    plain = prepare()
    assert "sub_slices" not in plain
    shaped = prepare(rf_model="shaped")
    assert shaped["sub_slices"] == expected
    assert shaped["estimate_bytes"] == estimate_simulation_from_sequence(
        seq, {**base, "voxels": base["voxels"] * expected}
    )
    assert shaped["estimate_bytes"] > plain["estimate_bytes"]
    assert prepare(rf_model="shaped", sub_slices=2)["sub_slices"] == 2
    refused = [
        ({"rf_model": "bloch"}, "rf_model must be one of"),
        ({"rf_model": "shaped", "sub_slices": 65}, "sub_slices must lie"),
        ({"rf_model": "shaped", "sub_slices": 1.5}, "sub_slices must be an integer"),
        ({"sub_slices": 2}, "sub_slices applies to rf_model 'shaped'"),
    ]
    for bad, message in refused:
        with pytest.raises(ValueError, match=message):
            prepare(**bad)
        with pytest.raises(ValueError, match=message):
            run_call("simulate", {"sequence": seq, "phantom": data}, bad, "cpu")

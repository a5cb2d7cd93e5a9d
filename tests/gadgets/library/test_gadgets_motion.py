"""Motion in the twin: the ``motion`` parameter of ``mr0_preview``/``mr0_retrosim`` and
``mr0 simulate --motion``.
"""

from __future__ import annotations

import json

import ismrmrd
import nibabel as nib
import numpy as np
import pytest
from conftest import CORPUS, run_session

from gadgets.framework.core import Context
from gadgets.library.preview import TwinPreviewGadget
from gadgets.wire.framing import MessageId
from mr0core.cli import main as mr0_main
from mr0core.io.mrd import sig_to_mrd
from mr0core.io.mrd_images import image_array
from mr0core.jobs import SimSettings, load_job_phantom, run_simulation
from mr0core.pulseq import read_seq_text, seq_to_sequence
from mr0core.sim.motion import MotionLog

RIGID = {"model": "rigid", "translation_mm_per_s": [40.0, 0.0, 0.0],
         "rotation_deg_per_s": [0.0, 0.0, 30.0]}  # fmt: skip
# a tracking log: still, then a 4 mm jump and a 3° turn half-way through write_gre's 0.3 s
LOG = "time\trx\try\trz\ttx\tty\ttz\n0\t0\t0\t0\t0\t0\t0\n0.15\t0\t0\t0\t0\t0\t0\n" \
      "0.16\t0\t0\t3\t4\t0\t0\n1\t0\t0\t3\t4\t0\t0\n"  # fmt: skip


@pytest.fixture(scope="module")
def server_options():
    return {"idle_timeout_s": 120}


def _texts(msgs: list) -> list[str]:
    return [m.value for m in msgs if m.id == MessageId.TEXT]


def _images(msgs: list) -> list:
    return [m.value for m in msgs if m.id == MessageId.IMAGE]


def test_preview_with_motion_equals_mr0_simulate_motion(server, tmp_path):
    seq = CORPUS / "write_gre.seq"
    base = {"seq": seq.read_text(), "phantom": "brain", "size": 32, "progress_s": 0}
    moving = run_session(server.address[1], "mr0_preview", {**base, "motion": RIGID})
    assert not any(t.startswith("ERROR") for t in _texts(moving)), _texts(moving)
    (image,) = _images(moving)
    meta = ismrmrd.Meta.deserialize(image.attribute_string)
    assert json.loads(meta["MR0Motion"])["translation_mm_per_s"] == [40.0, 0.0, 0.0]
    assert meta["MR0Simulated"] == "true"  # the DICOM output labels it SIMULATED
    (still,) = _images(run_session(server.address[1], "mr0_preview", base))
    assert ismrmrd.Meta.deserialize(still.attribute_string)["MR0Motion"] == "none"
    got, plain = image_array(image)[..., 0], image_array(still)[..., 0]
    assert np.linalg.norm(got - plain) / np.linalg.norm(plain) > 0.1  # the subject moved

    motion_file = tmp_path / "motion.json"
    motion_file.write_text(json.dumps(RIGID))
    out = tmp_path / "ref.nii.gz"
    assert mr0_main(["simulate", str(seq), "--phantom", "brain", "--size", "32",
                     "--max-states", "200", "--min-state-mag", "1e-4", "--min-emitted", "1e-3",
                     "--min-latent", "1e-3", "--motion", str(motion_file),
                     "--out", str(tmp_path / "sig.npy"), "--recon", str(out)]) == 0  # fmt: skip
    ref = np.asarray(nib.load(out).get_fdata(), np.float32)
    np.testing.assert_allclose(got, ref.reshape(got.shape), rtol=1e-4, atol=1e-4 * ref.max())
    sidecar = json.loads(out.with_name("ref.json").read_text())
    assert sidecar["SimulatedMotion"]["model"] == "rigid"


def test_preview_with_a_log_in_the_session_thread():
    """Without a scheduler the motion reaches the simulation too."""
    seq = (CORPUS / "write_gre.seq").read_text()

    def image(**props) -> np.ndarray:
        gadget = TwinPreviewGadget(Context(), seq=seq, size=16, progress_s=0, **props)
        (img,) = [i for i in gadget.preview() if isinstance(i, ismrmrd.Image)]
        return image_array(img)[..., 0]

    still = image()
    moved = image(motion={"model": "log", "log": LOG})
    assert np.linalg.norm(moved - still) / np.linalg.norm(still) > 0.05


@pytest.mark.parametrize(
    ("motion", "message"),
    [
        ({"model": "rigid", "translation_mm_per_s": [1, 2]}, "three finite numbers"),
        ({"model": "log", "log": "time,rx\n0,0\n"}, "lacks columns"),
        ({"model": "teleport"}, "must be 'rigid' or 'log'"),
        ("[1, 2]", "expected a JSON object"),
        (5, "expected a JSON object"),
    ],
)
def test_bad_motion_gets_an_error_and_the_server_stays_up(server, motion, message):
    seq = (CORPUS / "write_gre.seq").read_text()
    msgs = run_session(server.address[1], "mr0_preview", {"seq": seq, "size": 8, "motion": motion})
    errors = [t for t in _texts(msgs) if t.startswith("ERROR")]
    assert errors, _texts(msgs)
    assert message in errors[0]
    ok = run_session(server.address[1], "mr0_preview", {"seq": seq, "size": 8})
    assert len(_images(ok)) == 1


def test_retro_simulation_with_the_tracking_log_reproduces_the_artefacts(server, tmp_path):
    """A 'measured' scan of a subject that moved (simulated with the log) is reproduced by the
    retro-simulation given that log, and not by the still twin."""
    text = (CORPUS / "write_gre.seq").read_text()
    seq = seq_to_sequence(read_seq_text(text, "write_gre.seq"))
    phantom, _ = load_job_phantom("brain", 32, 1)
    log = MotionLog.parse(LOG)
    signal = run_simulation(seq, phantom, SimSettings(), progress=False, motion=log)
    raw = tmp_path / "measured.h5"
    sig_to_mrd(raw, signal, seq)
    params = {"seq": text, "phantom": "brain", "size": 32}
    with_log = run_session(server.address[1], "mr0_retrosim",
                        {**params, "motion": {"model": "log", "log": LOG}}, raw)  # fmt: skip
    still = run_session(server.address[1], "mr0_retrosim", params, raw)
    rep_log, rep_still = (json.loads(_texts(m)[-1]) for m in (with_log, still))
    assert rep_log["motion"]["model"] == "log"
    assert rep_still["motion"] is None
    assert rep_log["nrmse"] < 0.01
    assert rep_still["nrmse"] > 10 * max(rep_log["nrmse"], 1e-3)
    simulated = [i for i in _images(with_log) if i.image_series_index == 2]
    meta = ismrmrd.Meta.deserialize(simulated[0].attribute_string)
    assert json.loads(meta["MR0Motion"])["samples"] == 4
    assert meta["MR0Simulated"] == "true"
    measured = [i for i in _images(with_log) if i.image_series_index == 1]
    assert ismrmrd.Meta.deserialize(measured[0].attribute_string)["MR0Simulated"] == "false"


def test_mr0_simulate_rejects_bad_motion_files(tmp_path, capsys):
    seq = CORPUS / "write_gre.seq"
    bad = tmp_path / "log.tsv"
    bad.write_text("time\trx\n0\t0\n")
    code = mr0_main(["simulate", str(seq), "--size", "8", "--motion", str(bad),
                     "--out", str(tmp_path / "s.npy")])  # fmt: skip
    assert code == 2
    assert "lacks columns" in capsys.readouterr().err
    code = mr0_main(["simulate", str(seq), "--size", "8", "--motion", str(tmp_path / "nope"),
                     "--out", str(tmp_path / "s.npy")])  # fmt: skip
    assert code == 2
    assert "motion file not found" in capsys.readouterr().err

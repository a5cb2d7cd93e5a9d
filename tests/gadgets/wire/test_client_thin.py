"""``mr0-client`` stays thin: it imports neither torch nor mr0core, and still works end to end.

Each client runs in its own interpreter (a subprocess), which reports the heavy modules it holds
after its ``main`` returned; the server runs in-process on a free port with the built-in chains.
mr0core's package imports are lazy, so the client may use its light modules
(``mr0core.clitools``, ``mr0core.io.rawfile``) without loading torch.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest
from conftest import REPO

from gadgets.wire.framing import MessageId, MessageReader, MessageWriter
from mr0core import clitools
from mr0core.cli import DEFAULT_SEQ
from mr0core.io import mrd, rawfile
from mr0core.io.dicom_out import write_dicom_volume
from mr0core.io.mrd_images import image_array, read_mrd_images

# the mr0core modules the client may load: they import neither torch nor the rest of mr0core
LIGHT_MR0CORE = {"mr0core", "mr0core._lazy", "mr0core.clitools", "mr0core.io",
                 "mr0core.io.rawfile"}  # fmt: skip

# Runs the client's main in a fresh interpreter, then names the heavy modules it imported.
CLIENT = """
import json, sys
from gadgets.wire.client import main
rc = main(sys.argv[1:])
light = {LIGHT}
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")
               or ((m == "mr0core" or m.startswith("mr0core.")) and m not in light))
print("HEAVY " + json.dumps(heavy), file=sys.stderr)
sys.exit(rc)
""".replace("{LIGHT}", repr(sorted(LIGHT_MR0CORE)))

HEADER = """<?xml version="1.0"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
<experimentalConditions><H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz>
</experimentalConditions>
<encoding><encodedSpace><matrixSize><x>32</x><y>6</y><z>1</z></matrixSize>
<fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></encodedSpace>
<reconSpace><matrixSize><x>32</x><y>6</y><z>1</z></matrixSize>
<fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></reconSpace>
<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>5</maximum><center>3</center>
</kspace_encoding_step_1></encodingLimits>
<trajectory>cartesian</trajectory></encoding></ismrmrdHeader>"""


def run_client(*argv: str) -> tuple[int, list[str], str]:
    """Run the client in its own interpreter; return its status, heavy modules and stdout."""
    proc = subprocess.run([sys.executable, "-c", CLIENT, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY ")]
    assert lines, proc.stderr
    return proc.returncode, json.loads(lines[-1][len("HEAVY ") :]), proc.stdout


def test_importing_the_client_loads_no_torch_and_only_light_mr0core_modules():
    code = (
        "import json, sys, gadgets.wire.client\n"
        "print(json.dumps(['torch' in sys.modules,"
        " sorted(m for m in sys.modules if m == 'mr0core' or m.startswith('mr0core.'))]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=60).stdout  # fmt: skip
    has_torch, mr0core_modules = json.loads(out)
    assert not has_torch
    assert set(mr0core_modules) <= LIGHT_MR0CORE
    assert "mr0core.io.rawfile" in mr0core_modules  # the shared check, not a copy


def test_importing_mr0core_loads_no_torch_until_a_name_is_used():
    code = (
        "import json, sys, mr0core, mr0core.io\n"
        "before = 'torch' in sys.modules\n"
        "mr0core.Sequence\n"
        "print(json.dumps([before, 'torch' in sys.modules, sorted(mr0core.__all__) == "
        "sorted(mr0core._NAMES), sorted(mr0core.io.__all__) == sorted(mr0core.io._NAMES)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=60).stdout  # fmt: skip
    assert json.loads(out) == [False, True, True, True]


def test_importing_gadgets_pacs_loads_neither_torch_nor_mr0core():
    code = (
        "import json, sys, gadgets.wire.pacs\n"
        "print(json.dumps([m for m in sys.modules if m in ('torch', 'mr0core', 'pydicom',"
        " 'pynetdicom') or m.startswith(('torch.', 'mr0core.'))]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=60).stdout  # fmt: skip
    assert json.loads(out) == []  # pydicom and pynetdicom too: imported when used


def test_thin_client_send_dicom_stays_thin(tmp_path):
    series = write_dicom_volume(tmp_path / "dcm", np.ones((4, 4)), np.eye(4), simulated=True)
    with socket.socket() as s:  # a port nobody listens on: the PACS is down
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}:X"
    rc, heavy, _ = run_client("--send-dicom", str(series.folder), "--pacs", dead,
                              "--retries", "0", "--timeout", "2")  # fmt: skip
    assert rc == 1
    assert heavy == []


def test_thin_client_preview_equals_a_direct_session(server, tmp_path):
    port = str(server.address[1])
    out = tmp_path / "preview.h5"
    argv = ("--preview", str(DEFAULT_SEQ), "--phantom", "shepp-logan", "--size", "16",
            "-p", port, "-o", str(out))  # fmt: skip
    rc, heavy, stdout = run_client(*argv)
    assert rc == 0
    assert heavy == []
    assert oct(out.stat().st_mode & 0o777) == "0o600"  # the images are patient data
    assert '"status"' in stdout  # progress texts printed
    (got,) = read_mrd_images(out)
    job = {"seq": DEFAULT_SEQ.read_text(), "phantom": "shepp-logan", "size": 16}
    with socket.create_connection(("127.0.0.1", server.address[1]), timeout=120) as sock:
        writer = MessageWriter(sock)
        writer.write_config_file("mr0_preview")
        writer.write_text(json.dumps(job))
        writer.write_close()
        direct = [m.value for m in MessageReader(sock) if m.id == MessageId.IMAGE]
    np.testing.assert_array_equal(image_array(got), image_array(direct[0]))


def test_thin_client_sends_a_file_through_passthrough(server, tmp_path):
    raw, out = tmp_path / "raw.h5", tmp_path / "back.h5"
    rng = np.random.default_rng(1)
    sent = (rng.standard_normal((6, 2, 32)) + 1j * rng.standard_normal((6, 2, 32))).astype(
        np.complex64
    )
    dset = ismrmrd.Dataset(str(raw), "dataset", create_if_needed=True)
    dset.write_xml_header(HEADER)
    for i, lines in enumerate(sent):
        acq = ismrmrd.Acquisition.from_array(lines)
        acq.idx.kspace_encode_step_1 = i
        dset.append_acquisition(acq)
    dset.close()
    rc, heavy, _ = run_client(str(raw), "-c", "passthrough", "-q", "-p", str(server.address[1]),
                              "-o", str(out))  # fmt: skip
    assert rc == 0
    assert heavy == []
    back = ismrmrd.Dataset(str(out), "dataset", create_if_needed=False)
    try:
        assert back.number_of_acquisitions() == len(sent)
        for i in range(len(sent)):
            np.testing.assert_array_equal(back.read_acquisition(i).data, sent[i])
    finally:
        back.close()


def test_thin_client_refuses_a_file_that_is_not_mrd(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    rc, heavy, _ = run_client(str(bad), "-p", "1", "-o", str(tmp_path / "out.h5"))
    assert rc == 2
    assert heavy == []


def _bad_files(tmp: Path) -> list[Path]:
    """A missing file, a non-HDF5 file, HDF5 without the group, the group without a header."""
    (tmp / "text.h5").write_text("plain text")
    with h5py.File(tmp / "nogroup.h5", "w") as f:
        f.create_group("other")
    with h5py.File(tmp / "noxml.h5", "w") as f:
        f.create_group("dataset").create_dataset("data", data=np.zeros(3))
    return [tmp / "missing.h5", tmp / "text.h5", tmp / "nogroup.h5", tmp / "noxml.h5"]


def test_raw_file_checks_name_the_problem(tmp_path):
    """The client's check is mr0core's (one implementation, torch-free)."""
    assert mrd.check_raw_file is rawfile.check_raw_file
    expected = ("ISMRMRD file not found", "not an HDF5 file", "no group 'dataset'",
                "has no ISMRMRD header")  # fmt: skip
    for path, message in zip(_bad_files(tmp_path), expected, strict=True):
        with pytest.raises((FileNotFoundError, rawfile.MrdFormatError), match=message):
            rawfile.check_raw_file(path)
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as f:
        f.create_group("dataset").create_dataset("xml", data=[HEADER.encode()])
    assert rawfile.check_raw_file(good) == good


def test_closed_pipe_exit_is_quiet():
    # the wrapper redirects stdout to /dev/null: run it where that does no harm
    code = (
        "import sys\n"
        "from mr0core.clitools import exit_quietly_on_closed_pipe\n"
        "def main():\n    raise BrokenPipeError\n"
        "sys.exit(exit_quietly_on_closed_pipe(main)())"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == clitools.CLOSED_PIPE_STATUS
    assert proc.stderr == b""


def test_the_client_starts_without_ismrmrd_and_sends_a_job_before_loading_it():
    """A job session goes out first; ismrmrd (0.25 s to import) loads while the server works."""
    code = "import json, sys, gadgets.wire.client\nprint(json.dumps('ismrmrd' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=60).stdout  # fmt: skip
    assert json.loads(out) is False


def test_the_plain_frames_are_the_message_writers():
    """frames.py is the one encoding of config-file, text and close messages."""
    import io

    from gadgets.wire.frames import MessageId, close_frame, config_file_frame, string_frame
    from gadgets.wire.framing import MessageWriter

    for nul in (False, True):
        buf = io.BytesIO()
        writer = MessageWriter(buf, nul_terminate=nul)
        writer.write_config_file("mr0_preview")
        writer.write_text('{"seq": "ü"}')
        writer.write_close()
        ours = config_file_frame("mr0_preview")
        ours += string_frame(MessageId.TEXT, '{"seq": "ü"}', "text", nul) + close_frame()
        assert buf.getvalue() == ours
    with pytest.raises(ValueError, match="NUL"):
        config_file_frame("a\x00b")

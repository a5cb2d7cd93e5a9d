"""mr0-server and mr0-client end to end, over real loopback sockets.

The server runs in-process on a free port with the repository's chains. References are made in
the same run: Debian's ismrmrd-tools (``ismrmrd_generate_cartesian_shepp_logan``,
``ismrmrd_recon_cartesian_2d``) and a numpy reconstruction written here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import ismrmrd
import ismrmrd.serialization as mser
import numpy as np
import pytest
from conftest import REPO

from gadgets.wire.client import send_file
from gadgets.wire.framing import MessageId, MessageReader, MessageWriter
from mr0core.io.mrd_images import read_mrd_images

GENERATE = shutil.which("ismrmrd_generate_cartesian_shepp_logan")
RECON = shutil.which("ismrmrd_recon_cartesian_2d")
needs_tools = pytest.mark.skipif(
    GENERATE is None or RECON is None, reason="ismrmrd-tools are not installed"
)


@pytest.fixture(scope="module")
def server_options():
    return {"idle_timeout_s": 20, "grace_s": 10, "shutdown_grace_s": 5}


def generate(tmp_path: Path, name: str, *args: str) -> Path:
    path = tmp_path / name
    subprocess.run([GENERATE, *args, "-o", str(path)], cwd=tmp_path, check=True,
                   capture_output=True)  # fmt: skip
    return path


def tool_recon(path: Path) -> np.ndarray:
    subprocess.run([RECON, str(path)], cwd=path.parent, check=True, capture_output=True)
    with h5py.File(path, "r") as f:
        return f["dataset/cpp/data"][0, 0, 0]  # [y, x]


def nrmse(ours: np.ndarray, ref: np.ndarray) -> float:
    """NRMSE after the least-squares scale (FFT scalings differ between tools)."""
    a = float((ours * ref).sum() / (ours * ours).sum())
    return float(np.linalg.norm(a * ours - ref) / np.linalg.norm(ref))


def numpy_recon(path: Path, prewhiten: bool) -> np.ndarray:
    """Independent reference: (prewhitened) FFT, oversampling removed, root sum of squares."""
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    noise, lines = [], {}
    for i in range(ds.number_of_acquisitions()):
        acq = ds.read_acquisition(i)
        if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            noise.append(acq.data)
        else:
            lines[acq.idx.kspace_encode_step_1] = acq.data  # [coils, samples]
    ds.close()
    ny = max(lines) + 1
    k = np.stack([lines[i] for i in range(ny)], axis=1)  # [coils, y, x]
    if prewhiten:
        n = np.concatenate(noise, axis=1)  # [coils, samples]
        cov = n @ n.conj().T / n.shape[1]
        w = np.linalg.inv(np.linalg.cholesky(cov))
        k = np.einsum("ij,jyx->iyx", w, k)
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(1, 2))), axes=(1, 2))
    nx = img.shape[2]
    img = img[:, :, nx // 4 : nx // 4 + nx // 2]  # 2x readout oversampling
    return np.sqrt((np.abs(img) ** 2).sum(0))  # [y, x]


def image_array(images: list[ismrmrd.Image]) -> np.ndarray:
    assert len(images) == 1
    return np.abs(images[0].data[0, 0])  # [y, x]


# -- the reference reconstruction ----------------------------------------------------------------


@needs_tools
def test_shepp_logan_default_chain_matches_references(server, tmp_path):
    path = generate(tmp_path, "shepp.h5", "-m", "128", "-c", "8", "-C")
    ref_tool = tool_recon(generate(tmp_path, "copy.h5", "-m", "128", "-c", "8", "-C"))
    port = server.address[1]
    # without prewhitening the result must equal ISMRMRD's own (non-whitening) recon
    out = tmp_path / "plain.h5"
    res = send_file(path, out, config="default", params={"prewhitening": False}, port=port,
                    progress=False)  # fmt: skip
    assert res.ok, res.errors
    plain = image_array(read_mrd_images(out))
    assert plain.shape == (128, 128)
    assert nrmse(plain, ref_tool) < 0.01
    assert nrmse(plain, numpy_recon(path, prewhiten=False)) < 0.01
    # the default prewhitens: equal to the whitened reference, and measurably not the plain one
    out = tmp_path / "white.h5"
    res = send_file(path, out, config="default", port=port, progress=False)
    assert res.ok, res.errors
    white = image_array(read_mrd_images(out))
    assert nrmse(white, numpy_recon(path, prewhiten=True)) < 0.01
    assert nrmse(white, ref_tool) > 0.01
    # the noise scan is not in the image: a recon that keeps it as a k-space line is far off
    img = read_mrd_images(out)[0]
    meta = ismrmrd.Meta.deserialize(img.attribute_string)
    for key in ("DataRole", "SeriesDescription", "ImageComment", "WindowCenter", "WindowWidth",
                "ImageProcessingHistory"):  # fmt: skip
        assert key in meta, key
    assert img.field_of_view[0] == pytest.approx(256, rel=1e-3) or img.field_of_view[0] > 0


# -- real peers -----------------------------------------------------------------------------------


def make_acquisitions(n: int, coils: int = 4, samples: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    acqs = []
    for i in range(n):
        data = rng.standard_normal((coils, samples)) + 1j * rng.standard_normal((coils, samples))
        acq = ismrmrd.Acquisition.from_array(data.astype(np.complex64))
        acq.idx.kspace_encode_step_1 = i
        acq.scan_counter = i
        acqs.append(acq)
    return acqs


HEADER = """<?xml version="1.0"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
<experimentalConditions><H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz>
</experimentalConditions>
<encoding><encodedSpace><matrixSize><x>64</x><y>8</y><z>1</z></matrixSize>
<fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></encodedSpace>
<reconSpace><matrixSize><x>64</x><y>8</y><z>1</z></matrixSize>
<fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></reconSpace>
<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>7</maximum><center>4</center>
</kspace_encoding_step_1></encodingLimits>
<trajectory>cartesian</trajectory></encoding></ismrmrdHeader>"""


def converse(port: int, payload: bytes, timeout: float = 20) -> list:
    """Send raw bytes; return every message of the answer until close or EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        return list(MessageReader(sock))


def stream(nul: bool = False, attribute_nul: bool = False, config: str = "passthrough",
           items=(), header: str = HEADER, close: bool = True) -> bytes:  # fmt: skip
    buf = io.BytesIO()
    w = MessageWriter(buf, nul_terminate=nul, attribute_nul=attribute_nul)
    w.write_config_file(config)
    if header is not None:
        w.write_header(header)
    for item in items:
        w.write(item)
    if close:
        w.write_close()
    return buf.getvalue()


@pytest.mark.parametrize("nul", [False, True])
def test_passthrough_returns_acquisitions_for_both_string_styles(server, nul):
    acqs = make_acquisitions(5)
    msgs = converse(server.address[1], stream(nul=nul, items=acqs))
    back = [m.value for m in msgs if m.id == MessageId.ACQUISITION]
    assert [m.id for m in msgs][-1] == MessageId.CLOSE
    assert not [m for m in msgs if m.id == MessageId.TEXT and str(m.value).startswith("ERROR")]
    assert len(back) == 5
    for a, b in zip(acqs, back, strict=True):
        assert np.array_equal(a.data, b.data)
        assert a.idx.kspace_encode_step_1 == b.idx.kspace_encode_step_1


def test_each_item_is_answered_before_the_next_is_sent(server):
    """An interactive client (one acquisition, wait for its echo, the next) is never stalled.

    The reader hands its batch on when it would wait for the network and the compute thread
    flushes its output when it would wait for input; if either held items back, this would
    time out instead.
    """
    acqs = make_acquisitions(40)
    with socket.create_connection(server.address, timeout=10) as sock:
        writer = MessageWriter(sock)
        writer.write_config_file("passthrough")
        writer.write_header(HEADER)
        reader = MessageReader(sock)
        for acq in acqs:
            writer.write(acq)
            back = reader.read()
            assert back.id == MessageId.ACQUISITION
            assert back.value.scan_counter == acq.scan_counter
            np.testing.assert_array_equal(back.value.data, acq.data)
        writer.write_close()
        assert reader.read().id == MessageId.CLOSE


def test_batches_keep_order_across_many_items(server):
    acqs = make_acquisitions(300, coils=2, samples=16, seed=3)  # many batches of 32
    msgs = converse(server.address[1], stream(items=acqs))
    back = [m.value for m in msgs if m.id == MessageId.ACQUISITION]
    assert [a.scan_counter for a in back] == list(range(300))
    np.testing.assert_array_equal(back[-1].data, acqs[-1].data)


def test_gadgetron_style_image_attributes_pass_through(server):
    img = ismrmrd.Image.from_array(np.arange(64, dtype=np.float32).reshape(8, 8))
    meta = ismrmrd.Meta()
    meta["SeriesDescription"] = "peer"
    img.attribute_string = meta.serialize()
    msgs = converse(server.address[1], stream(attribute_nul=True, items=[img]))
    back = [m.value for m in msgs if m.id == MessageId.IMAGE]
    assert len(back) == 1
    assert np.array_equal(back[0].data, img.data)
    assert ismrmrd.Meta.deserialize(back[0].attribute_string)["SeriesDescription"] == "peer"


def test_protocol_serializer_stream(server):
    buf = io.BytesIO()
    ser = mser.ProtocolSerializer(buf)
    ser.serialize(mser.ConfigFile("passthrough"))
    ser.serialize(ismrmrd.xsd.CreateFromDocument(HEADER))
    acqs = make_acquisitions(3, seed=1)
    for acq in acqs:
        ser.serialize(acq)
    ser.close()
    msgs = converse(server.address[1], buf.getvalue())
    back = [m.value for m in msgs if m.id == MessageId.ACQUISITION]
    assert len(back) == 3
    assert np.array_equal(back[2].data, acqs[2].data)


# -- hostile input ------------------------------------------------------------------------------


def _id(n: int) -> bytes:
    return struct.pack("<H", n)


def _config(name: bytes) -> bytes:
    return _id(1) + name.ljust(1024, b"\0")


HOSTILE = {
    "unknown config": stream(config="no_such_chain"),
    "path config": stream(config="../../etc/passwd"),
    "module config": stream(config="os"),
    "cut mid-message": stream(items=make_acquisitions(2), close=False)[:-700],
    "unknown id": _config(b"passthrough")
    + _id(3)
    + struct.pack("<I", len(HEADER))
    + HEADER.encode()
    + _id(4242),
    "huge length": _config(b"passthrough") + _id(3) + struct.pack("<I", 2**32 - 1) + b"<x/>",
    "acquisition before header": stream(header=None, items=make_acquisitions(1)),
    "non-UTF-8 text": _config(b"passthrough")
    + _id(3)
    + struct.pack("<I", len(HEADER))
    + HEADER.encode()
    + _id(5)
    + struct.pack("<I", 4)
    + b"\xff\xfe\xfa\x80"
    + _id(4),
}


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) * 1024


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_gets_error_then_close(server, case):
    before = _peak_rss()
    msgs = converse(server.address[1], HOSTILE[case])
    texts = [str(m.value) for m in msgs if m.id == MessageId.TEXT]
    assert texts, f"{case}: no answer"
    assert texts[-1].startswith("ERROR"), texts
    assert msgs[-1].id == MessageId.CLOSE
    # nothing near the claimed sizes was allocated
    assert _peak_rss() - before < 64 * 2**20
    # and the next connection is served normally
    acqs = make_acquisitions(2, seed=3)
    ok = converse(server.address[1], stream(items=acqs))
    assert len([m for m in ok if m.id == MessageId.ACQUISITION]) == 2


def test_config_name_never_reaches_the_filesystem(server, tmp_path):
    msgs = converse(
        server.address[1], stream(config=str(REPO / "gadgets" / "config" / "chains" / "default"))
    )
    assert str(msgs[0].value).startswith("ERROR")


# -- FIRE / OpenRecon parameters -----------------------------------------------------------------


def fire(parameters: dict) -> str:
    return json.dumps({"version": "1.1.0", "parameters": parameters})


def test_fire_parameters_choose_the_chain_and_keep_what_it_has(server):
    """An OpenRecon UI sends every parameter; the chain is parameters.config, the rest applies
    where the chain has the property (and is left out where it has none)."""
    acqs = make_acquisitions(3, seed=5)
    ui = {"config": "passthrough", "phantom": "brain", "size": 64, "prewhitening": "False"}
    msgs = converse(server.address[1], stream(config="openrecon", items=[fire(ui), *acqs]))
    back = [m.value for m in msgs if m.id == MessageId.ACQUISITION]
    assert not [m for m in msgs if m.id == MessageId.TEXT], msgs
    assert [a.scan_counter for a in back] == [0, 1, 2]
    # customconfig, when set, wins over config
    ui = {"config": "no_such_chain", "customconfig": "passthrough"}
    msgs = converse(server.address[1], stream(config="openrecon", items=[fire(ui), *acqs]))
    assert len([m for m in msgs if m.id == MessageId.ACQUISITION]) == 3


@needs_tools
def test_fire_parameters_reach_the_chosen_chains_properties(server, tmp_path):
    """prewhitening "False" from the UI gives the image of {"prewhitening": false}, not the
    default (prewhitened) one; the UI's twin parameters, which `default` lacks, are dropped."""
    raw = generate(tmp_path, "sl.h5", "-c", "8", "-m", "64", "-n", "0.05", "-C")
    ds = ismrmrd.Dataset(str(raw), "dataset", create_if_needed=False)
    header = ds.read_xml_header().decode()
    acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    ds.close()

    def image(config: str, text: str | None) -> np.ndarray:
        items = [text, *acqs] if text else acqs
        msgs = converse(server.address[1], stream(config=config, header=header, items=items))
        texts = [m.value for m in msgs if m.id == MessageId.TEXT]
        assert not texts, texts
        return image_array([m.value for m in msgs if m.id == MessageId.IMAGE])

    ui = {"config": "default", "prewhitening": "False", "phantom": "brain", "kind": "auto"}
    from_ui = image("openrecon", fire(ui))
    plain = image("default", json.dumps({"prewhitening": False}))
    whitened = image("default", None)
    np.testing.assert_allclose(from_ui, plain, rtol=1e-6)
    assert not np.allclose(from_ui, whitened, rtol=1e-3)


@pytest.mark.parametrize(
    ("config", "ui", "error"),
    [
        ("openrecon", None, "no chain 'openrecon'"),  # no FIRE parameters: the name must exist
        ("openrecon", {"size": 64}, "no chain 'openrecon'"),  # parameters without a choice
        ("openrecon", {"config": "no_such_chain"}, "no chain 'no_such_chain'"),
        ("openrecon", {"config": "../../etc/passwd"}, "ERROR"),
        ("openrecon", {"config": 7}, "must be a chain name"),
        ("passthrough", {"config": "default", "Combine.nope": 1}, None),  # dropped, not an error
    ],
)
def test_fire_parameter_errors(server, config, ui, error):
    items = [fire(ui)] if ui is not None else []
    msgs = converse(server.address[1], stream(config=config, items=items))
    texts = [str(m.value) for m in msgs if m.id == MessageId.TEXT]
    if error is None:
        assert not texts
    else:
        assert texts[-1].startswith("ERROR")
        assert error in texts[-1]
    assert msgs[-1].id == MessageId.CLOSE


def test_plain_parameters_stay_strict(server):
    msgs = converse(server.address[1], stream(config="default", items=[json.dumps({"size": 64})]))
    assert "no gadget of the chain has that property" in str(msgs[0].value)


# -- concurrency --------------------------------------------------------------------------------


def test_eight_concurrent_clients_get_their_own_data(server):
    results: dict[int, list] = {}
    sent = {i: make_acquisitions(20, coils=8, samples=256, seed=100 + i) for i in range(8)}

    def client(i: int) -> None:
        msgs = converse(server.address[1], stream(items=sent[i]), timeout=60)
        results[i] = [m.value for m in msgs if m.id == MessageId.ACQUISITION]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert sorted(results) == list(range(8))
    for i, back in results.items():
        assert len(back) == 20
        assert all(np.array_equal(a.data, b.data) for a, b in zip(sent[i], back, strict=True))


@needs_tools
def test_concurrent_reconstructions_are_isolated(server, tmp_path):
    paths = [generate(tmp_path, f"s{i}.h5", "-m", "64", "-c", "4", "-n", str(0.01 + 0.2 * i))
             for i in range(3)]  # fmt: skip
    outs: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        res = send_file(paths[i], tmp_path / f"o{i}.h5", port=server.address[1], progress=False,
                        params={"prewhitening": False})  # fmt: skip
        assert res.ok, res.errors
        outs[i] = image_array(read_mrd_images(tmp_path / f"o{i}.h5"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(3):
        assert nrmse(outs[i], numpy_recon(paths[i], prewhiten=False)) < 0.01


# -- the command line, save-dir and graceful shutdown ------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_tools
def test_cli_server_client_save_dir_and_sigterm(tmp_path):
    port = _free_port()
    save = tmp_path / "saved"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gadgets.serve.server", "--port", str(port), "--save-dir", str(save),
         "--log-level", "info"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        path = generate(tmp_path, "in.h5", "-m", "64", "-c", "4")
        out = tmp_path / "out.h5"
        done = subprocess.run(
            [sys.executable, "-m", "gadgets.wire.client", str(path), "--config", "default",
             "-p", str(port), "--out", str(out), "-q"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert len(read_mrd_images(out)) == 1
        bad = subprocess.run(
            [sys.executable, "-m", "gadgets.wire.client", str(path), "--config", "../x",
             "-p", str(port), "--out", str(tmp_path / "bad.h5"), "-q"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert bad.returncode == 1
        assert "ERROR" in bad.stdout
        saved = sorted(save.glob("*.h5"))
        assert saved
        ds = ismrmrd.Dataset(str(saved[0]), "dataset", create_if_needed=False)
        assert ds.number_of_acquisitions() == 64
        ds.close()
        # SIGTERM: a session in flight still finishes, then the server exits 0
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        sock.sendall(stream(items=make_acquisitions(2), close=False))
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        sock.sendall(_id(4))
        reader = MessageReader(sock)
        kinds = []
        while True:
            msg = reader.read()
            kinds.append(msg.id)
            if msg.id == MessageId.CLOSE:
                break
        sock.close()
        assert kinds.count(MessageId.ACQUISITION) == 2
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        logs = proc.communicate()[1]
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(entry.get("event") == "open" and "session" in entry for entry in lines)


def test_keep_freed_memory_takes_on_glibc():
    import platform

    from gadgets.serve.server import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt settings are glibc's")
    # the glibc defaults, set again, so that the test process keeps its usual behaviour
    assert keep_freed_memory(128 * 1024, 128 * 1024)

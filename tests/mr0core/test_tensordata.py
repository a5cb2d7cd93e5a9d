"""The one tensor-container base (``mr0core.tensordata``) on SimData, KData and Sequence.

Devices are checked with PyTorch's ``meta`` device, which every machine has: a tensor moved there
keeps its shape and dtype but no data, so "every tensor moved" is testable without a GPU. The
tensors are collected by an independent walk (``_all_tensors``), not by the code under test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CORPUS

import mr0core as mr0
from mr0core.phantom import SimData
from mr0core.recon import KData, KDataError
from mr0core.recon import kdata as kdata_module
from mr0core.sequence import Sequence, as_sequence
from mr0core.tensordata import TensorContainer

META = torch.device("meta")
GRE = Path(mr0.__file__).parent / "data" / "sequences" / "gre.seq"


def _all_tensors(obj: Any, seen: set[int] | None = None) -> list[torch.Tensor]:
    """Every tensor reachable from ``obj`` through attributes, slots, dicts, lists, tuples."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    children: list[Any] = []
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, list | tuple):
        children = list(obj)
    if isinstance(obj, TensorContainer):
        children += list(getattr(obj, "__dict__", {}).values())
        for cls in type(obj).__mro__:
            for name in cls.__dict__.get("__slots__", ()):
                if hasattr(obj, name):
                    children.append(getattr(obj, name))
    return [t for child in children for t in _all_tensors(child, seen)]


def _voxels(n: int = 6) -> SimData:
    pos = torch.stack([torch.linspace(-0.05, 0.05, n), torch.zeros(n), torch.zeros(n)], 1)
    phantom = mr0.CustomVoxelPhantom(pos, PD=torch.linspace(0.5, 1.0, n), T1=1.0, T2=0.1,
                                     voxel_size=0.01)  # fmt: skip
    return phantom.build()


def _simdata_with_everything() -> SimData:
    data = _voxels()
    n = data.voxel_count
    return SimData(
        data.PD, data.T1, data.T2, data.T2dash, data.D, data.B0,
        torch.ones(2, n, dtype=torch.complex64), torch.ones(3, n, dtype=torch.complex64),
        data.size, torch.eye(4), data.voxel_pos, data.nyquist, data.dephasing_func,
        tissue_masks={"a": torch.arange(n) % 2 == 0},
    )  # fmt: skip


# -- to / cpu / device ----------------------------------------------------------------------


def test_simdata_to_moves_every_tensor_and_keeps_the_functions() -> None:
    data = _simdata_with_everything()
    data.phantom_motion = lambda t: (torch.eye(3).expand(len(t), 3, 3), torch.zeros(len(t), 3))
    data.extra_map = torch.ones(data.voxel_count)  # a field nobody told to() about
    moved = data.to(META)
    tensors = _all_tensors(moved)
    assert len(tensors) == len(_all_tensors(data)) >= 13  # (equal tensors may be one object)
    assert all(t.device == META for t in tensors)
    assert moved.extra_map.device == META
    assert moved.dephasing_func is data.dephasing_func
    assert moved.phantom_motion is data.phantom_motion
    assert moved.tissue_masks["a"].dtype == torch.bool
    assert moved is not data
    assert data.PD.device.type == "cpu"
    assert moved.device == META
    same = data.to(data.device)  # already there: still a new object (MR-zero's cuda() is)
    assert same is not data
    assert same.PD is data.PD


def test_to_dtype_converts_float_and_complex_but_not_integers() -> None:
    data = _simdata_with_everything().to(torch.float64)
    assert data.PD.dtype == torch.float64
    assert data.B1.dtype == torch.complex128
    assert data.tissue_masks["a"].dtype == torch.bool
    seq = Sequence.import_file(GRE).to(dtype=torch.float64)
    assert seq[0].event_time.dtype == torch.float64
    assert seq[0].pulse.angle.dtype == torch.float64
    assert seq[0].adc_usage.dtype == torch.int32
    with pytest.raises(TypeError, match=r"torch\.int64"):
        seq.to(dtype=torch.int64)


def test_sequence_to_moves_every_repetition_and_keeps_shared_waveforms() -> None:
    seq = Sequence.import_file(CORPUS / "write_tse.seq")
    waves = [rep.pulse.waveform for rep in seq if rep.pulse.waveform is not None]
    assert len(waves) > len({id(w) for w in waves})  # some pulses share one waveform
    moved = seq.to(META)
    assert isinstance(moved, Sequence)
    assert len(moved) == len(seq)
    assert moved.normalized_grads == seq.normalized_grads
    assert moved.definitions == seq.definitions
    assert moved.definitions is not seq.definitions
    assert all(t.device == META for t in _all_tensors(moved))
    moved_waves = [rep.pulse.waveform for rep in moved if rep.pulse.waveform is not None]
    assert len({id(w) for w in moved_waves}) == len({id(w) for w in waves})
    assert moved.device == META
    assert seq.device.type == "cpu"


def test_sequence_cpu_round_trip_is_equal() -> None:
    seq = Sequence.import_file(GRE)
    copy = seq.to(torch.float64).to(torch.float32).cpu()
    assert torch.equal(copy.get_kspace(), seq.get_kspace())
    assert copy[3] is not seq[3]


def test_kdata_to_moves_every_tensor() -> None:
    seq = Sequence.import_file(GRE)
    n = int(seq.get_kspace().shape[0])
    kd = KData.from_sequence(torch.ones(n, 2, dtype=torch.complex64), seq)
    kd.noise = torch.zeros(4, 2, dtype=torch.complex64)
    moved = kd.to(META)
    assert all(t.device == META for t in _all_tensors(moved))
    assert moved.encoded_matrix == kd.encoded_matrix
    assert moved.header is kd.header
    assert moved.device == META


def test_mixed_devices_are_reported() -> None:
    data = _simdata_with_everything()
    kd = KData(
        signal=torch.ones(4, 1, dtype=torch.complex64), readout_start=torch.tensor([0]),
        readout_length=torch.tensor([4]), idx={}, encoded_matrix=(4, 1, 1),
        recon_matrix=(4, 1, 1), encoded_fov_m=(0.1, 0.1, 0.1), recon_fov_m=(0.1, 0.1, 0.1),
        center_sample=torch.tensor([2]), sample_time_s=torch.tensor([1e-5]),
        flags=torch.tensor([0]), noise=torch.ones(2, 1, dtype=torch.complex64, device=META),
    )  # fmt: skip
    with pytest.raises(ValueError, match="cpu, meta"):
        _ = kd.device
    assert data.device.type == "cpu"


# -- select -----------------------------------------------------------------------------------


def test_simdata_select_picks_voxels_on_every_voxel_axis() -> None:
    data = _simdata_with_everything()
    data.voxel_motion = lambda t: data.voxel_pos.expand(len(t), -1, -1) + t[:, None, None]
    mask = torch.tensor([True, False, True, True, False, False])
    sub = data.select(mask)
    idx = torch.tensor([0, 2, 3])
    assert sub.voxel_count == 3
    assert torch.equal(sub.PD, data.PD[idx])
    assert torch.equal(sub.voxel_pos, data.voxel_pos[idx])
    assert sub.B1.shape == (2, 3)
    assert sub.coil_sens.shape == (3, 3)
    assert torch.equal(sub.tissue_masks["a"], data.tissue_masks["a"][idx])
    assert sub.size is data.size
    assert sub.affine is data.affine
    assert sub.nyquist is data.nyquist
    t = torch.tensor([0.0, 1.0])
    assert torch.equal(sub.voxel_motion(t), data.voxel_motion(t)[:, idx])
    with pytest.raises(ValueError, match="not built from a phantom"):
        sub.recover()
    assert torch.equal(data.select(torch.tensor([5, 0])).PD, data.PD[[5, 0]])
    with pytest.raises(IndexError, match=r"shape \[6\]"):
        data.select(torch.ones(5, dtype=torch.bool))
    with pytest.raises(IndexError, match="out of range"):
        data.select(torch.tensor([6]))


def test_select_refuses_a_tensor_field_without_an_axis() -> None:
    data = _voxels()
    data.extra_map = torch.ones(data.voxel_count)
    with pytest.raises(TypeError, match="'extra_map'"):
        data.select(torch.tensor([0]))


def test_sequence_and_repetition_select() -> None:
    seq = Sequence.import_file(GRE)
    picked = seq.select(torch.tensor([4, 1]))
    assert isinstance(picked, Sequence)
    assert len(picked) == 2
    assert picked[0] is seq[4]
    assert picked[1] is seq[1]
    assert picked.definitions == seq.definitions
    rep = seq[5]
    adc = rep.select(rep.adc_usage > 0)
    assert adc.event_count == int((rep.adc_usage > 0).sum())
    assert bool((adc.adc_usage > 0).all())
    assert adc.pulse is rep.pulse
    with pytest.raises(TypeError, match="no selection axis"):
        rep.pulse.select(torch.tensor([0]))


def test_kdata_select_keeps_its_errors() -> None:
    seq = Sequence.import_file(GRE)
    n = int(seq.get_kspace().shape[0])
    kd = KData.from_sequence(torch.arange(n).to(torch.complex64), seq)
    sub = kd.select(torch.tensor([2, 0]))
    first = kd.signal[kd.readout_start[2] : kd.readout_start[2] + kd.readout_length[2]]
    assert torch.equal(sub.signal[: int(sub.readout_length[0])], first)
    assert sub.readout_start.tolist() == [0, int(kd.readout_length[2])]
    with pytest.raises(KDataError, match="out of range"):
        kd.select(torch.tensor([kd.n_readouts]))


# -- one way to get a Sequence ------------------------------------------------------------------


def test_from_text_equals_import_file() -> None:
    text = (CORPUS / "write_epi_label.seq").read_text()
    a = Sequence.from_text(text, "epi.seq")
    b = Sequence.import_file(CORPUS / "write_epi_label.seq")
    assert len(a) == len(b)
    assert torch.equal(a.get_kspace(), b.get_kspace())
    assert a.get_labels().keys() == b.get_labels().keys()
    with pytest.raises(mr0.pulseq.SeqFormatError, match=r"broken\.seq"):
        Sequence.from_text("[VERSION]\nmajor 1\nminor 4\n[BLOCKS]\n1 1 7 0 0 0 0 0\n", "broken.seq")


def test_as_sequence_is_one_function() -> None:
    assert kdata_module.as_sequence is as_sequence
    seq = Sequence.import_file(GRE)
    assert as_sequence(seq) is seq
    assert len(as_sequence(GRE)) == len(seq)
    assert len(as_sequence(str(GRE))) == len(seq)
    with pytest.raises(TypeError, match="int"):
        as_sequence(3)

"""Pickling a tensor container: each tensor travels with its own elements, and comes back equal.

What a scheduler call sends to a worker process is pickled; the Pulseq import slices every
repetition's fields out of one tensor per field, so a plain tensor pickle carried the whole
storage once per repetition (9 MB for a 64-line FLASH).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

import mr0core as mr0
from mr0core.sequence import Sequence

GRE = Path(mr0.__file__).parent / "data" / "sequences" / "gre.seq"


def test_a_sequence_pickles_its_own_elements_and_round_trips() -> None:
    seq = Sequence.from_text(GRE.read_text(), "gre.seq")
    own = sum(
        t.numel() * t.element_size()
        for rep in seq
        for t in (rep.gradm, rep.event_time, rep.adc_usage, rep.adc_phase)
    )
    data = pickle.dumps(seq, protocol=pickle.HIGHEST_PROTOCOL)
    # the fields' own bytes plus the pulses, waveform and framing: far below the storages
    assert len(data) < 4 * own + 200_000
    storages = sum(rep.gradm.untyped_storage().nbytes() for rep in seq)
    assert storages > 10 * len(data)  # control: what a plain tensor pickle would have carried
    back = pickle.loads(data)
    assert len(back) == len(seq)
    for a, b in zip(seq, back, strict=True):
        for name in ("gradm", "event_time", "adc_usage", "adc_phase"):
            x, y = getattr(a, name), getattr(b, name)
            assert isinstance(y, torch.Tensor)
            assert y.dtype == x.dtype
            assert torch.equal(x, y)
        assert torch.equal(a.pulse.angle, b.pulse.angle)
    # a waveform shared by many pulses stays one object
    waves = {id(rep.pulse.waveform) for rep in back if rep.pulse.waveform is not None}
    assert len(waves) == len({id(rep.pulse.waveform) for rep in seq if rep.pulse.waveform})


def test_simdata_pickles_complex_fields_and_leaves_gradients_alone() -> None:
    data = mr0.util.load_phantom((6, 6), url="builtin:brain").build()
    data.T1 = data.T1.clone().requires_grad_(True)  # a leaf that needs gradients stays a tensor
    back = pickle.loads(pickle.dumps(data))
    assert back.B1.dtype == torch.complex64
    assert torch.equal(back.B1, data.B1)
    assert torch.equal(back.coil_sens, data.coil_sens)
    assert back.T1.requires_grad
    assert torch.equal(back.T1.detach(), data.T1.detach())


def test_copies_are_made_of_tensors_not_of_the_pickled_stand_ins() -> None:
    """copy.copy shares the attributes, copy.deepcopy copies them; both stay tensors."""
    import copy

    data = mr0.util.load_phantom((6, 6), url="builtin:brain").build()
    data.T1 = data.T1.clone().requires_grad_(True)
    shallow = copy.copy(data)
    assert shallow.PD is data.PD
    assert shallow.T1 is data.T1
    deep = copy.deepcopy(data)
    assert isinstance(deep.PD, torch.Tensor)
    assert deep.PD is not data.PD
    assert torch.equal(deep.PD, data.PD)
    assert deep.T1.requires_grad
    seq = Sequence.from_text(GRE.read_text(), "gre.seq")
    twin = copy.deepcopy(seq)
    assert len(twin) == len(seq)
    assert isinstance(twin[3].gradm, torch.Tensor)
    assert torch.equal(twin[3].gradm, seq[3].gradm)
    assert twin[3] is not seq[3]

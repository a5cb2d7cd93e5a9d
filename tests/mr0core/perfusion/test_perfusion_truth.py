"""The built-in brain's perfusion ground truth (ASL DRO's values, via tissues.json)."""

from __future__ import annotations

import numpy as np
import pytest

from mr0core.phantom.builtin import brain, brain_ground_truth


@pytest.mark.parametrize("field", ["3T", "1.5T"])
def test_perfusion_values_per_tissue(field):
    seg, affine, info = brain_ground_truth(field)
    tissues = info["tissues"]
    assert (tissues["gm"]["perfusion_rate"], tissues["gm"]["transit_time"]) == (60.0, 0.8)
    assert (tissues["wm"]["perfusion_rate"], tissues["wm"]["transit_time"]) == (20.0, 1.2)
    assert tissues["csf"]["perfusion_rate"] == 0.0
    assert info["lambda_blood_brain"] == 0.9
    assert info["T1_blood"] == 1.65  # as shipped by the source, at both fields
    assert info["B0_T"] == {"3T": 3.0, "1.5T": 1.5}[field]
    assert seg.dtype == np.uint8
    assert seg.shape == (145, 181, 154)
    assert set(np.unique(seg)) == {0, *info["labels"].values()}
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), 1.0)
    # relaxation values agree with the phantom the simulator uses
    ph = brain(size=16, field=field)
    assert {t: tissues[t]["T1"] for t in ph.tissues} == ph.T1


def test_ground_truth_is_read_only_and_fields_differ():
    seg, _, info3 = brain_ground_truth("3T")
    _, _, info15 = brain_ground_truth(1.5)
    with pytest.raises(ValueError, match="read-only"):
        seg[0, 0, 0] = 1
    assert info3["tissues"]["gm"]["T1"] != info15["tissues"]["gm"]["T1"]
    with pytest.raises(ValueError, match="field"):
        brain_ground_truth("7T")

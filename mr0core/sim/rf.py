"""How a pulse acts on each voxel: the effective B1 of the transmit channels and the pTx shim.

Shared by the PDG main pass (:mod:`mr0core.sim.pdg`) and the isochromat reference
(:mod:`mr0core.sim.isochromat`), so that both follow one convention, MR-zero's (checked as a
black box in ``tests/mr0core/sim/test_reference_conventions.py``):

* with several channels, channel ``c`` is driven with ``shim_amp[c] · exp(−i shim_phase[c])``, so
  ``B1eff = Σ_c shim_amp[c] · exp(−i shim_phase[c]) · B1[c]``;
* a one-channel shim is not applied: ``B1eff = Σ_c B1[c]``. MR-zero ignores it; we do too, so
  that the same script gives the same numbers, but warn once when such a shim is not the
  identity ``(1, 0)`` (nothing accepted and silently ignored). Scale ``B1`` instead.

The flip is then ``angle · |B1eff|`` and the phase ``phase + arg B1eff``.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["effective_b1"]

_warned_single_channel = False


def effective_b1(shim: torch.Tensor, b1: torch.Tensor, rep_index: int) -> torch.Tensor:
    """Return the per-voxel effective B1 of a pulse (relative; 1 = nominal flip).

    Parameters
    ----------
    shim
        The pulse's shim, ``[channels, 2]``: amplitude (relative) and phase (rad) per channel.
    b1
        The phantom's B1+ maps, complex ``[channels, voxels]`` (relative).
    rep_index
        The repetition, for error messages.

    Returns
    -------
    torch.Tensor
        Complex ``[voxels]``, on ``b1``'s device.

    Raises
    ------
    ValueError
        When a shim of several channels does not match the phantom's channel count.
    """
    global _warned_single_channel
    if shim.shape[0] == 1:
        if not _warned_single_channel and not (
            bool(shim[0, 0].detach() == 1) and bool(shim[0, 1].detach() == 0)
        ):
            _warned_single_channel = True
            warnings.warn(
                f"repetition {rep_index}: a one-channel pTx shim ({shim[0, 0].item():g}, "
                f"{shim[0, 1].item():g} rad) is not applied, as in MR-zero; scale the phantom's B1 "
                "or the pulse angle instead (warned once)",
                stacklevel=3,
            )
        return b1.sum(0)
    if shim.shape[0] != b1.shape[0]:
        raise ValueError(
            f"repetition {rep_index}: the pulse has {shim.shape[0]} shim channels, the phantom "
            f"{b1.shape[0]} B1 channels"
        )
    shim = shim.to(b1.device)
    drive = torch.polar(shim[:, 0].to(b1.real.dtype), -shim[:, 1].to(b1.real.dtype))
    return (drive.unsqueeze(1) * b1).sum(0)

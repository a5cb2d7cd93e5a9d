"""Shaped RF pulses: per-voxel rotations from a Bloch simulation of the waveform.

Model
-----
A pulse with an :class:`~mr0core.sequence.RfWaveform` is played step by step: step ``n`` lasts
``dt[n]`` and rotates the magnetisation of a voxel at ``r`` with off-resonance ``Δf`` (Hz) about
the effective field (rad/s)::

    Ω = (2π Re B, 2π Im B, −2π (G_n · r + Δf)),   B = b1[n] · s · B1eff(r) · e^{iΔφ}

(``s = pulse.angle / waveform.angle``, ``Δφ = pulse.phase − waveform.phase``, ``B1eff`` the
voxel's effective B1 with the pTx shim, :mod:`mr0core.sim.rf`). A right-handed rotation by
``|Ω| dt`` about ``Ω`` is the spin-½ matrix ``U = [[a, −b̄], [b, ā]]`` (Cayley–Klein parameters)
with ``a = cos(|Ω|dt/2) − i Ω_z sin(|Ω|dt/2)/|Ω|``, ``b = −i 2πB sin(|Ω|dt/2)/|Ω|``. The pulse is
the product of its steps (composed as a balanced tree, so a pulse of N steps takes log₂ N
vectorised products). Its action on ``m+ = Mx + i My`` and ``Mz`` is::

    m+' = ā² m+ − b² conj(m+) + 2 ā b Mz
    Mz' = (|a|² − |b|²) Mz − 2 Re(ā b̄ m+)

which for a hard pulse (``a = cos α/2``, ``b = −i e^{iφ} sin α/2``) is the instantaneous
rotation of :mod:`mr0core.sim.graph`, so the shaped rotation maps onto the PDG's edge kinds with
per-voxel complex coefficients (:func:`edge_coefficients`).

Reference point
---------------
The sequence model puts the pulse at its centre and applies the gradient moments and the
off-resonance phase of the time before the centre (in the previous repetition's events) and
after it (in the pulse's repetition) as free precession. So that these together equal the Bloch
simulation of the pulse, the rotation used at the centre is
``U_c = F_post⁻¹ · U · F_pre⁻¹``, where ``F_pre`` and ``F_post`` are the free precessions
(rotations about z) of the waveform's time before and after its centre. They commute with
nothing but z rotations, so this only multiplies ``a`` and ``b`` by phases.

What is neglected
-----------------
Relaxation, diffusion and the T2′ spread of off-resonances act during the pulse as they do in
the event model: the events covering the pulse relax and dephase the magnetisation before and
after the rotation at the centre (exact as the pulse's duration over T2 goes to zero); the
rotation itself uses each voxel's B0 without its T2′ distribution.

Through-slice integration
-------------------------
A 2-D grid phantom (one voxel along z) has a thickness, ``size_z``; a slice-selective pulse
varies across it. :func:`expand_sub_slices` turns each voxel into ``n`` sub-slices at the
midpoints of ``n`` equal parts of its thickness, each a box along z with its own rotations; the
main pass propagates their states like voxels, and forms each voxel's signal once from the sum
of its sub-slices' states weighted by :func:`through_slice_weights` (each sub-slice's integral
of the state's dephasing ``e^{−2πi k_z z}``), so only the state propagation costs ``n`` times
more. The voxel is taken as a box along z whatever its in-plane shape.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from .rf import effective_b1

if TYPE_CHECKING:
    from mr0core.phantom.sim_data import SimData
    from mr0core.sequence import Pulse, RfWaveform, Sequence

__all__ = [
    "MAX_STEP_ROTATION",
    "MAX_SUB_SLICES",
    "RF_MODELS",
    "check_rf_model",
    "default_sub_slices",
    "edge_coefficients",
    "expand_sub_slices",
    "merge_steps",
    "profile_axis",
    "pulse_rotation",
    "slice_profile",
    "small_tip_flip",
    "step_rotation",
    "sub_slice_offsets",
    "through_slice_weights",
    "waveform_spinor",
]

RF_MODELS = ("instantaneous", "shaped")

RotationCache = dict[tuple[int, float, bytes], tuple[torch.Tensor, torch.Tensor]]
"""Bloch integrations of shaped pulses for one simulation: (waveform id, angle, shim bytes) to
the rotation ``(a, b)`` ``[V]``, shared between equal pulses."""
MAX_SUB_SLICES = 64
"""Most sub-slices the default (:func:`default_sub_slices`) chooses."""
MAX_STEP_ROTATION = 0.05
"""Largest rotation (rad) of a merged waveform step (:func:`merge_steps`)."""
_TREE_ELEMENTS = 1 << 22  # steps x positions per chunk of small_tip_flip (32 MiB complex64)
_SPINOR_ELEMENTS = 1 << 16  # steps x voxels per chunk of a pulse's integration (in cache)
_TWO_PI = 2 * math.pi


class ShapedRfError(ValueError):
    """A shaped-pulse simulation was asked for something it cannot do (the message says what)."""


def check_rf_model(rf_model: str) -> str:
    """Return ``rf_model`` if it names a model, else raise :class:`ShapedRfError`."""
    if rf_model not in RF_MODELS:
        raise ShapedRfError(f"rf_model must be one of {', '.join(RF_MODELS)}, got {rf_model!r}")
    return rf_model


def step_rotation(
    bx: torch.Tensor, by: torch.Tensor, wz: torch.Tensor, dt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the Cayley–Klein ``(a, b)`` of single steps of duration ``dt`` (s).

    ``bx + i by``: the B1 (Hz); ``wz``: the free precession frequency (Hz, ``G·r + Δf``).
    """
    wx, wy, w_z = _TWO_PI * bx, _TWO_PI * by, -_TWO_PI * wz  # rad/s
    norm = torch.sqrt(wx * wx + wy * wy + w_z * w_z)
    half = 0.5 * norm * dt
    f = 0.5 * dt * torch.sinc(half / math.pi)  # sin(half) / |Ω|, smooth at |Ω| = 0
    a = torch.complex(torch.cos(half), -w_z * f)
    b = torch.complex(wy * f, -wx * f)  # -i (wx + i wy) f
    return a, b


def _compose(
    a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Product ``U_N ⋯ U_1`` of the step matrices ``(a, b) [N, V]``, as a balanced tree.

    Of an odd number of rows the last (latest) is set aside and multiplied on from the left at
    the end, after those set aside at later levels (which are earlier in time).
    """
    later: list[tuple[torch.Tensor, torch.Tensor]] = []
    while a.shape[0] > 1:
        if a.shape[0] % 2:
            later.append((a[-1], b[-1]))
            a, b = a[:-1], b[:-1]
        a1, b1, a2, b2 = a[0::2], b[0::2], a[1::2], b[1::2]  # step 1 first, then step 2
        a, b = a2 * a1 - b2.conj() * b1, b2 * a1 + a2.conj() * b1
    ra, rb = a[0], b[0]
    for a2, b2 in reversed(later):
        ra, rb = a2 * ra - b2.conj() * rb, b2 * ra + a2.conj() * rb
    return ra, rb


_SERIES_HALF_ANGLE = 0.1
"""Largest step half-angle (rad) for the series of :func:`_series_steps`."""


def _series_steps(
    c_xy: torch.Tensor, c_z: torch.Tensor, pos_df: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Cayley–Klein ``(a, b) [N, Vc]`` of small steps, as :func:`step_rotation` gives them.

    ``c_xy [N, 2]``: ``π dt Re B1``, ``π dt Im B1``; ``c_z [N, 4]``: ``−π dt (G, 1)``;
    ``pos_df [Vc, 4]``: ``(r, Δf)``; ``scale [Vc]``: the flip scale. With the half-angles
    ``h = (hx, hy, hz)`` and ``q = |h|²``: ``a = cos|h| − i hz S``, ``b = hy S − i hx S``,
    ``S = sin|h| / |h|``, both by their series to ``q³`` (valid for ``|h|`` ≤ 0.1).
    """
    hz = c_z @ pos_df.T  # [N, Vc]
    hx = c_xy[:, :1] * scale[None]
    hy = c_xy[:, 1:] * scale[None]
    q = torch.addcmul(torch.addcmul(hz * hz, hx, hx), hy, hy)
    cos = (1 - q * (1 / 30)).mul_(q).mul_(-1 / 12).add_(1).mul_(q).mul_(-0.5).add_(1)
    sinc = (1 - q * (1 / 42)).mul_(q).mul_(-1 / 20).add_(1).mul_(q).mul_(-1 / 6).add_(1)
    return torch.complex(cos, -hz * sinc), torch.complex(hy * sinc, -hx * sinc)


def merge_steps(
    b1: torch.Tensor, dt: torch.Tensor, grad: torch.Tensor, pos: torch.Tensor, df: torch.Tensor,
    b1_scale: torch.Tensor, max_rotation: float = MAX_STEP_ROTATION,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Merge runs of consecutive steps into coarser ones (duration-weighted means of B1 and G).

    The merge length is the largest whose steps rotate no voxel by more than ``max_rotation``
    (rad), bounded by the largest B1, gradient and off-resonance the voxels see. A merged step
    is exact where the field is constant over it; Pulseq raster waveforms (1 µs) are far finer
    than their variation, and merging to ``|Ω| dt ≤ 0.05`` keeps the rotation within about
    1e-4 of the exact product (and is far quicker). Differentiable.
    """
    with torch.no_grad():
        span = pos.abs().amax(0) if len(pos) else torch.zeros(3, device=pos.device)
        off = float((grad.abs().amax(0) * span.to(grad.dtype)).sum())
        peak = float(b1.abs().max()) * (float(b1_scale.max()) if len(b1_scale) else 1.0)
        omega = _TWO_PI * (peak + off + (float(df.abs().max()) if len(df) else 0.0))
        step = float(dt.max())
    k = 1 if omega * step <= 0 else int(max_rotation / (omega * step))
    if k <= 1:
        return b1, dt, grad
    group = torch.arange(len(dt), device=dt.device) // k
    n = int(group[-1]) + 1
    dtm = torch.zeros(n, dtype=dt.dtype, device=dt.device).index_add(0, group, dt)
    b1m = torch.zeros(n, dtype=b1.dtype, device=b1.device).index_add(0, group, b1 * dt)
    gm = torch.zeros((n, 3), dtype=grad.dtype, device=grad.device).index_add(
        0, group, grad * dt[:, None]
    )
    return b1m / dtm, dtm, gm / dtm[:, None]


def waveform_spinor(
    b1: torch.Tensor, dt: torch.Tensor, grad: torch.Tensor, center: float, pos: torch.Tensor,
    df: torch.Tensor, b1_scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Cayley–Klein parameters of a waveform per voxel, referenced to its centre.

    Parameters
    ----------
    b1
        ``[N]`` complex B1 in Hz (already scaled to the pulse's angle).
    dt
        ``[N]`` step durations in s.
    grad
        ``[N, 3]`` gradients in 1/m/s (Hz/m).
    center
        Time of the centre after the waveform's start, s.
    pos
        ``[V, 3]`` voxel positions in m.
    df
        ``[V]`` off-resonance in Hz.
    b1_scale
        ``[V]`` real flip scale per voxel (``|B1eff|``).

    Returns
    -------
    tuple of torch.Tensor
        ``a, b`` complex ``[V]``: the rotation at the centre, ``F_post⁻¹ U F_pre⁻¹`` (module
        documentation); its transverse phase (``arg B1eff``, the pulse's phase offset) is not
        yet applied.
    """
    fdt = pos.dtype  # float32 (or float64 for references)
    cdt = torch.complex128 if fdt == torch.float64 else torch.complex64
    dt = dt.to(pos.device, fdt)
    grad = grad.to(pos.device, fdt)
    b1 = b1.to(pos.device, cdt)
    df = df.to(fdt)
    b1_scale = b1_scale.to(fdt)
    if not (pos.requires_grad or df.requires_grad or b1_scale.requires_grad):
        distinct = _distinct_voxels(grad, pos, df, b1_scale)
        if distinct is not None:
            pos_u, df_u, scale_u, inverse = distinct
            a, b = _spinor_rows(b1, dt, grad, center, pos_u, df_u, scale_u)
            return a[inverse], b[inverse]
    return _spinor_rows(b1, dt, grad, center, pos, df, b1_scale)


def _spinor_rows(
    b1: torch.Tensor, dt: torch.Tensor, grad: torch.Tensor, center: float, pos: torch.Tensor,
    df: torch.Tensor, b1_scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """:func:`waveform_spinor` of every row (inputs already on one device and dtype).

    The steps are integrated in chunks of voxels whose ``[N, Vc]`` temporaries stay in the CPU's
    cache (each pass over them is memory-bound otherwise). When every step's half-angle
    ``|Ω| dt / 2`` is at most :data:`_SERIES_HALF_ANGLE` (merged steps are far below), the step
    rotation uses the series of cos and sin/x to the sixth power (:func:`_series_steps`,
    truncation below 1e-11) instead of sqrt, sinc and cos: on a 64² brain at 9 sub-slices the
    pulse took 0.33 s before these two changes.
    """
    fdt = pos.dtype
    n_steps, n_vox = len(dt), len(pos)
    chunk = max(1, _SPINOR_ELEMENTS // max(n_steps, 1))
    with torch.no_grad():
        span = pos.abs().amax(0) if n_vox else torch.zeros(3, dtype=fdt, device=pos.device)
        off = float((grad.abs() @ span).max()) + (float(df.abs().max()) if n_vox else 0.0)
        peak = float(b1.abs().max()) * (float(b1_scale.abs().max()) if n_vox else 0.0)
        half_max = math.pi * (peak + off) * float(dt.max()) if n_steps else 0.0
    series = half_max <= _SERIES_HALF_ANGLE
    if series:  # per-step constants: half-angles are these times the voxel's values
        c_xy = math.pi * dt[:, None] * torch.stack([b1.real, b1.imag], 1)  # [N, 2]
        c_z = torch.cat([grad, torch.ones_like(dt)[:, None]], 1) * (-math.pi * dt[:, None])
        pos_df = torch.cat([pos, df[:, None]], 1)  # [V, 4]: r and Δf
    parts_a, parts_b = [], []
    for lo in range(0, n_vox, chunk):
        sl = slice(lo, lo + chunk)
        if series:
            a, b = _series_steps(c_xy, c_z, pos_df[sl], b1_scale[sl])
        else:
            wz = grad @ pos[sl].T + df[sl][None]  # [N, Vc] off-resonance G_n · r + Δf (Hz)
            bx = b1.real[:, None] * b1_scale[sl][None]
            by = b1.imag[:, None] * b1_scale[sl][None]
            a, b = step_rotation(bx, by, wz, dt[:, None])
        a, b = _compose(a, b)
        parts_a.append(a)
        parts_b.append(b)
    a, b = torch.cat(parts_a), torch.cat(parts_b)
    # free precession before / after the centre: rotations about z by ψ = −2π ∫ (G·r + Δf) dt
    ends = torch.cumsum(dt.double(), 0)
    before = torch.clamp(center - (ends - dt.double()), min=0) - torch.clamp(center - ends, min=0)
    before = torch.minimum(before, dt.double()).to(fdt)  # [N] s of each step before the centre
    after = dt - before
    total = dt.sum()
    k_pre = (grad * before[:, None]).sum(0)  # [3] 1/m
    k_post = (grad * after[:, None]).sum(0)
    t_pre = before.sum()
    psi_pre = -_TWO_PI * (pos @ k_pre + df * t_pre)
    psi_post = -_TWO_PI * (pos @ k_post + df * (total - t_pre))
    rot_a = torch.complex(
        torch.cos(0.5 * (psi_pre + psi_post)), torch.sin(0.5 * (psi_pre + psi_post))
    )
    rot_b = torch.complex(
        torch.cos(0.5 * (psi_pre - psi_post)), torch.sin(0.5 * (psi_pre - psi_post))
    )
    return a * rot_a, b * rot_b


def _distinct_voxels(
    grad: torch.Tensor, pos: torch.Tensor, df: torch.Tensor, b1_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Return the voxels' distinct pulse responses, or None when there are as many as voxels.

    A voxel's rotation depends on its position only through ``G_n · r``: when every step's
    gradient ``[N, 3]`` points along one axis ``ĝ`` (slice selection), only ``ĝ · r`` counts, so
    the sub-slices of a 2-D phantom without B0 and B1 maps have as many distinct rotations as
    sub-slices. Returns ``(pos [U, 3], df [U], b1_scale [U], inverse [V])``, the distinct
    ``(ĝ · r, Δf, |B1|)`` rows (positions ``(ĝ · r) ĝ``; all of ``r`` when the gradient turns)
    and each voxel's row; so the Bloch integration runs on ``U`` rows instead of ``V``.
    """
    if len(pos) < 2:
        return None
    norms = grad.norm(dim=1)
    peak = float(norms.max()) if len(norms) else 0.0
    if peak == 0.0:
        key = torch.stack([df, b1_scale], dim=1)
        axis = None
    else:
        axis = grad[int(norms.argmax())] / peak
        along = grad @ axis
        if float((grad - along[:, None] * axis[None]).abs().max()) > 1e-6 * peak:
            axis, key = None, torch.cat([pos, df[:, None], b1_scale[:, None]], dim=1)
        else:
            key = torch.stack([pos @ axis, df, b1_scale], dim=1)
    rows, inverse = _unique_rows(key)
    if len(rows) >= len(pos):
        return None
    if peak == 0.0:
        pos_u = torch.zeros((len(rows), 3), dtype=pos.dtype, device=pos.device)
    elif axis is not None:
        pos_u = rows[:, 0, None] * axis[None]
    else:
        pos_u = rows[:, :3]
    return pos_u.contiguous(), rows[:, -2].contiguous(), rows[:, -1].contiguous(), inverse


def _unique_rows(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the distinct rows of ``key [V, c]`` and each row's index among them.

    On the CPU by numpy on the rows' bytes (``torch.unique(dim=0)`` took 88 ms for 27522 rows of
    3, this 9 ms); -0.0 is made 0.0 first, so that equal values are equal bytes.
    """
    if key.device.type != "cpu":
        rows_t, inverse_t = torch.unique(key, dim=0, return_inverse=True)
        return rows_t, inverse_t
    k = np.ascontiguousarray((key + 0.0).numpy())
    rows = k.view(np.dtype((np.void, k.dtype.itemsize * k.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    return torch.from_numpy(k[first]), torch.from_numpy(inverse.reshape(-1).astype(np.int64))


def edge_coefficients(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-voxel coefficients ``[6, V]`` of the PDG edge kinds for the rotation ``(a, b)``.

    Rows as in :mod:`mr0core.sim.pdg`'s ``_EDGE_RULES``: ``ā²`` (+ from +), ``−b²`` (+ from
    conj +), ``ā b`` (+ from z, half of ``2 ā b``: z states and their mirrors both feed it),
    ``|a|² − |b|²`` (z from z), ``−2 ā b̄`` (z from +; z states hold half of Mz) and its conjugate.
    """
    ac = a.conj()
    z_from_plus = -2 * ac * b.conj()
    mz = (a.real**2 + a.imag**2 - b.real**2 - b.imag**2).to(a.dtype)
    return torch.stack([ac * ac, -b * b, ac * b, mz, z_from_plus, z_from_plus.conj()])


def _pulse_b1(pulse: Pulse, wave: RfWaveform, dev: torch.device) -> torch.Tensor:
    """Return the waveform's B1 scaled to the pulse's angle (its phase comes after the spinor)."""
    b1 = wave.b1.to(dev, torch.complex64)
    if wave.angle > 0:
        return b1 * (pulse.angle.to(dev, torch.float32) / wave.angle)
    return b1


def pulse_rotation(
    pulse: Pulse, data_pos: torch.Tensor, b0: torch.Tensor, b1: torch.Tensor, rep_index: int,
    normalized_size: torch.Tensor | None, cache: RotationCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Rotation ``(a, b)`` ``[V]`` of a shaped pulse at each voxel, phase included.

    ``b1``: the phantom's complex B1 ``[channels, V]``; ``normalized_size``: the phantom size
    ``[3]`` for sequences with normalised gradients (the waveform's gradient is divided by it),
    else None. ``cache`` (a dict kept for one simulation) shares the Bloch integration between
    pulses of the same waveform, angle and shim when nothing needs gradients through it.
    """
    wave = pulse.waveform
    assert wave is not None
    dev = data_pos.device
    b1eff = effective_b1(pulse.shim_array.to(dev, torch.float32), b1, rep_index)  # [V]
    shift = pulse.phase.to(dev, torch.float32) - wave.phase
    grads = [pulse.angle, wave.b1, wave.grad, data_pos, b0, b1]
    key = None
    if cache is not None and not any(t.requires_grad for t in grads):
        key = (id(wave), float(pulse.angle), pulse.shim_array.detach().cpu().numpy().tobytes())
        hit = cache.get(key)
        if hit is not None:
            a, b = hit
            return a, b * _unit(shift + torch.angle(b1eff))
    grad = wave.grad
    if normalized_size is not None:
        grad = grad.to(dev) / normalized_size.to(dev)
    b1_wave, dt, grad = merge_steps(
        _pulse_b1(pulse, wave, dev), wave.dt.to(dev), grad.to(dev), data_pos, b0, b1eff.abs()
    )
    a, b = waveform_spinor(b1_wave, dt, grad, wave.center, data_pos, b0, b1eff.abs())
    if key is not None:
        assert cache is not None
        cache[key] = (a, b)
    return a, b * _unit(shift + torch.angle(b1eff))


def _unit(phase: torch.Tensor) -> torch.Tensor:
    return torch.complex(torch.cos(phase), torch.sin(phase))


REFOCUSING_ANGLE = math.radians(120)
"""Pulses of at least this flip (or of usage REFOC) count as refocusing for the sub-slices."""


def _z_extent(seq: Sequence) -> tuple[float, bool, float]:
    """Return the largest z extent of the waveforms, whether one refocuses, and a flip.

    The flip is the largest of the other (excitation) pulses, in rad, when there is more than
    one of them, else 0. The extent is ``∫ |G_z| dt`` (1/m); only pulses that play a z
    gradient count. Refocusing: :data:`REFOCUSING_ANGLE` or more, or usage REFOC.
    """
    from mr0core.sequence import PulseUsage

    areas: dict[int, float] = {}
    extent = 0.0
    refocusing = False
    flip = 0.0
    excitations = 0
    for rep in seq:
        w = rep.pulse.waveform
        if w is None:
            continue
        area = areas.get(id(w))
        if area is None:
            area = areas[id(w)] = float((w.grad[:, 2].detach().abs() * w.dt.detach()).sum())
        if area == 0:
            continue
        extent = max(extent, area)
        angle = abs(float(rep.pulse.angle.detach()))
        if rep.pulse.usage == PulseUsage.REFOC or angle >= REFOCUSING_ANGLE:
            refocusing = True
        elif angle > 0:
            flip = max(flip, angle)
            excitations += 1
    return extent, refocusing, flip if excitations > 1 else 0.0


FLIP_PER_FACTOR = math.radians(15)
"""Excitation flip per unit of :func:`default_sub_slices`' factor (beyond 15° it grows)."""


def default_sub_slices(seq: Sequence, data: SimData) -> int:
    """Sub-slices of the shaped model by default.

    For a grid phantom one voxel thick along z (thickness ``d``) under pulses that play a
    gradient along z: ``ceil(f · d · K) + 2`` (at most :data:`MAX_SUB_SLICES`), with
    ``K = ∫|G_z| dt`` the largest excitation k-space extent of the waveforms (1/m) and ``f`` the
    larger of 1, 4 when a selective refocusing pulse plays (``REFOCUSING_ANGLE`` or usage REFOC)
    and, when selective excitations repeat, ``α / 15°`` (``α`` the largest of them). The
    midpoints' error falls as 1/n², and its scale grows with the flip: products of profiles (a
    refocused echo) and the flanks of a large flip (where a spoiled gradient echo's signal comes
    from: the local flip passes the Ernst angle there) are sharper than one small-tip profile.
    Measured on ``write_gre`` (TBW-4 sinc, RF-spoiled) on the brain 1, 1.67 and 3.3 slices
    thick: with ``f = 1`` the error was 0.6 %, 0.1 %, 0.04 % at 10° (32², against 64
    sub-slices) but, on a 16² brain against 128, 1.4 % at 30° (1 slice), 4.6 %, 1.5 %, 5.9 % at
    60° and 5.9 %, 9.2 %, 7.9 % at 90°; 32 sub-slices were within 0.6 % everywhere
    (``tests/mr0core/sim/test_sim_shaped_rf.py`` checks the default at 90°). A selective
    90°–180° spin echo 1 to 3 slices thick is within 1 % at ``f = 4``. 1 otherwise
    (3-D grids resolve the profile with their own voxels, custom voxels have no grid thickness).
    """
    nyq_z = float(data.nyquist[2])
    if not math.isfinite(nyq_z):
        return 1
    voxels_z = round(2 * nyq_z * float(data.size[2]))
    extent, refocusing, flip = _z_extent(seq)
    if voxels_z != 1 or extent == 0:
        return 1
    thickness = 0.5 / nyq_z
    factor = max(4.0 if refocusing else 1.0, flip / FLIP_PER_FACTOR)
    return int(min(MAX_SUB_SLICES, math.ceil(factor * thickness * extent) + 2))


def expand_sub_slices(data: SimData, n: int) -> SimData:
    """Return ``data`` with every voxel split into ``n`` sub-slices along z.

    The sub-slices sit at the midpoints of ``n`` equal parts of the voxel's thickness
    ``d = 1 / (2 nyquist_z)`` and carry the voxel's properties with ``PD / n``; their Nyquist
    frequency along z is ``n`` times higher (that of a ``d / n`` voxel). Voxel ``v``'s
    sub-slices are ``v·n … v·n + n − 1``. The main pass forms each voxel's signal from its
    sub-slices' states with :func:`through_slice_weights`.
    """
    from mr0core.phantom.sim_data import SimData

    if n < 1:
        raise ShapedRfError(f"sub_slices must be >= 1, got {n}")
    if n == 1:
        return data
    nyq = data.nyquist
    if not math.isfinite(float(nyq[2])):
        raise ShapedRfError(
            f"sub_slices={n} needs a grid phantom (finite Nyquist frequency along z); custom "
            "voxels have no grid thickness"
        )
    thick = 0.5 / nyq[2]
    frac = torch.as_tensor(sub_slice_offsets(n), dtype=data.voxel_pos.dtype, device=data.device)
    offsets = torch.zeros((n, 3), dtype=data.voxel_pos.dtype, device=data.device)
    offsets[:, 2] = frac * thick.to(data.voxel_pos.dtype)
    pos = (data.voxel_pos[:, None, :] + offsets[None]).reshape(-1, 3)

    def rep(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return torch.repeat_interleave(x, n, dim=dim)

    scale = torch.ones(3, dtype=nyq.dtype, device=nyq.device)
    scale[2] = n
    return SimData(
        PD=rep(data.PD) / n, T1=rep(data.T1), T2=rep(data.T2), T2dash=rep(data.T2dash),
        D=rep(data.D), B0=rep(data.B0), B1=rep(data.B1, 1), coil_sens=rep(data.coil_sens, 1),
        size=data.size, affine=data.affine, voxel_pos=pos, nyquist=nyq * scale,
        dephasing_func=data.dephasing_func,
        tissue_masks={k: rep(v) for k, v in data.tissue_masks.items()},
    )  # fmt: skip


def sub_slice_offsets(n: int) -> np.ndarray:
    """Return the sub-slices' offsets ``[n]`` from the voxel centre in thicknesses (float64)."""
    return (np.arange(n) + 0.5) / n - 0.5


def through_slice_weights(kz: torch.Tensor, thickness: float, n: int) -> torch.Tensor:
    """Signal weights ``R [S, n]`` of a voxel's ``n`` sub-slices for states dephased by ``kz``.

    Sub-slice ``j`` is a box of thickness ``h = thickness / n`` (m) at the offset ``δ_j`` of
    :func:`sub_slice_offsets` (its magnetisation uniform across it): ``R_j(k) = (1/n) sinc(k h)
    e^{−2πi k δ_j}``, the integral of ``e^{−2πi k z}`` over it relative to the voxel, so that the
    voxel's signal from a state whose sub-slices hold ``m_j`` is ``Σ_j m_j R_j(k_z)``: the
    integral along z, dephasing included, which the signal then needs in-plane only. ``kz [S]``
    in 1/m (float, differentiable); complex64 on ``kz``'s device.
    """
    k = kz.to(torch.float32)[:, None]
    off = torch.as_tensor(sub_slice_offsets(n) * thickness, dtype=torch.float32, device=kz.device)
    mag = torch.sinc(k * (thickness / n)) / n  # [S, 1]
    phase = (-_TWO_PI) * k * off[None]  # [S, n]
    return torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))


def profile_axis(wave: RfWaveform) -> torch.Tensor:
    """Return the unit vector ``[3]`` (float64) along the waveform's mean gradient (z if none)."""
    mean = wave.grad.detach().double().mean(0)
    norm = float(mean.norm())
    return mean / norm if norm > 0 else torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)


def small_tip_flip(
    wave: RfWaveform, z: torch.Tensor, axis: torch.Tensor | None = None
) -> torch.Tensor:  # fmt: skip
    """Small-tip (linear-response) flip angle ``θ(z)`` (rad) of a waveform: its Fourier profile.

    ``θ(z) = 2π |Σ_n b1[n] dt[n] exp(2πi k[n] z)|`` with ``k[n]`` the excitation k-space
    (1/m) of step ``n``'s midpoint, ``∫ G·axis dt`` from the pulse centre: for the gradient
    of a flat top, ``G (t_n − centre)``, so that ``θ`` is the Fourier transform of the complex
    waveform mapped to position through the gradient amplitude. At the centre of the slice
    (where the gradient cancels the waveform's frequency offset) it is the waveform's angle.
    Exact in the limit of small angles; float64.

    Parameters
    ----------
    wave
        The waveform (at its own angle).
    z
        ``[Z]`` positions in m along ``axis``.
    axis
        ``[3]`` unit vector; default :func:`profile_axis`.

    Returns
    -------
    torch.Tensor
        ``[Z]`` float64 flip angles in rad.
    """
    if axis is None:
        axis = profile_axis(wave)
    b1 = wave.b1.detach().cpu().to(torch.complex128)
    dt = wave.dt.detach().cpu().double()
    g = wave.grad.detach().cpu().double() @ axis.detach().cpu().double()  # [N] Hz/m
    area = g * dt
    k_mid = torch.cumsum(area, 0) - 0.5 * area  # at the step midpoints, from the start
    mid = torch.cumsum(dt, 0) - 0.5 * dt
    # k at the centre: interpolated between the step midpoints (clamped at the ends)
    j = int(torch.searchsorted(mid, torch.tensor([float(wave.center)], dtype=mid.dtype)))
    if j <= 0:
        k_c = float(k_mid[0]) - float(g[0]) * (float(mid[0]) - float(wave.center))
    elif j >= len(mid):
        k_c = float(k_mid[-1]) + float(g[-1]) * (float(wave.center) - float(mid[-1]))
    else:
        w = (float(wave.center) - float(mid[j - 1])) / float(mid[j] - mid[j - 1])
        k_c = (1 - w) * float(k_mid[j - 1]) + w * float(k_mid[j])
    k = k_mid - k_c
    zz = torch.as_tensor(z, dtype=torch.float64).reshape(-1)
    weights = b1 * dt
    out = torch.empty(len(zz), dtype=torch.float64)
    chunk = max(1, _TREE_ELEMENTS // max(len(k), 1))
    for lo in range(0, len(zz), chunk):
        phase = (2 * math.pi) * zz[lo : lo + chunk, None] * k[None, :]
        out[lo : lo + chunk] = (torch.polar(torch.ones_like(phase), phase) @ weights).abs()
    return (2 * math.pi) * out


def slice_profile(
    wave: RfWaveform, z: torch.Tensor, axis: torch.Tensor | None = None,
    df: torch.Tensor | None = None, b1_scale: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Excitation profile of a waveform from ``Mz = 1``, referenced to the pulse centre.

    Parameters
    ----------
    wave
        The waveform (at its own angle and phase).
    z
        ``[Z]`` positions in m along ``axis``.
    axis
        ``[3]`` unit vector; default: the direction of the waveform's mean gradient (z if none).
    df
        ``[Z]`` off-resonance in Hz (default 0).
    b1_scale
        Relative B1.

    Returns
    -------
    tuple of torch.Tensor
        ``m+ [Z]`` complex (the transverse magnetisation as the centre-referenced model gives it:
        as if the gradient after the centre were ideally rephased) and ``Mz [Z]``.
    """
    if axis is None:
        axis = profile_axis(wave)
    z = torch.as_tensor(z, dtype=torch.float32)
    pos = z[:, None] * axis.to(torch.float32)[None]
    df_t = torch.zeros_like(z) if df is None else torch.as_tensor(df, dtype=torch.float32)
    scale = torch.as_tensor(b1_scale, dtype=torch.float32).expand_as(z)
    a, b = waveform_spinor(wave.b1, wave.dt, wave.grad, wave.center, pos, df_t, scale)
    mplus = 2 * a.conj() * b
    mz = a.real**2 + a.imag**2 - b.real**2 - b.imag**2
    return mplus, mz


def warn_no_waveforms(seq: Sequence) -> None:
    """Warn once per call when ``rf_model="shaped"`` finds no pulse with a waveform."""
    if not any(rep.pulse.waveform is not None for rep in seq):
        warnings.warn(
            "rf_model='shaped': no pulse of the sequence carries an RfWaveform (only Pulseq "
            "imports keep them), so every pulse is simulated as instantaneous",
            stacklevel=3,
        )

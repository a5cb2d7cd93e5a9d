"""Isochromat simulation: the slow, independent check of the PDG simulation.

Every voxel is represented by ``spin_count`` isochromats (spins), simulated as a
``[voxels, spins]`` tensor by a plain Python loop over repetitions and events. Nothing is
approximated apart from the finite number of spins, so the result converges to the exact Bloch
solution of the modelled voxel as ``spin_count`` grows.

Model
-----
Pulse
    Instantaneous, at the start of each repetition. Per voxel the flip is ``α = angle · |B1eff|``
    and the phase ``φ = phase + arg B1eff`` with ``B1eff = Σ_c B1[c] · shim_amp[c] ·
    exp(−i shim_phase[c])`` (a one-channel shim is not applied: :mod:`mr0core.sim.rf`). The
    pulse is a right-handed rotation by ``α`` about ``(cos φ, sin φ, 0)``; with
    ``m+ = Mx + i My``, ``c = cos(α/2)``, ``s = sin(α/2)``::

        m+' = c² m+ + e^{2iφ} s² conj(m+) − i e^{iφ} sin(α) Mz
        Mz' = cos(α) Mz + sin(α) Im(e^{−iφ} m+)

    so a 90° pulse of phase 0 turns ``Mz = 1`` into ``m+ = −i`` and a 180° pulse of phase 0
    conjugates ``m+``.
Events
    A spin at ``r`` (m) with off-resonance ``Δf`` (Hz) precesses as
    ``m+ *= exp(−2πi (Δk·r + Δf·dt))`` with the event's gradient moment ``Δk`` (1/m; divided by
    ``data.size`` for sequences with ``normalized_grads``), and relaxes:
    ``m+ *= exp(−dt/T2)``, ``Mz = Mz·exp(−dt/T1) + 1 − exp(−dt/T1)``.
ADC
    At the end of an event with ``adc_usage > 0``:
    ``signal[coil] = Σ_voxels PD · coil_sens[coil] · mean_spins(m+) · exp(i adc_phase)``.
T2′
    Every spin has a static extra off-resonance drawn from a Cauchy (Lorentzian) distribution of
    half width ``1 / (2π T2′)`` Hz, whose characteristic function makes the voxel signal decay
    as ``exp(−|τ| / T2′)`` with the dephasing time ``τ``; a 180° pulse refocuses it.
Spin positions
    Uniform in a box of one voxel around the voxel position: the edge is ``1 / (2 nyquist)``
    (``size / N`` of a voxel grid); for custom voxels (infinite Nyquist frequency) the
    ``voxel_size`` of ``data.dephasing_func`` (a :class:`~mr0core.phantom.sim_data.VoxelShape`),
    an axis without either has no spread. So ``box``, ``sinc`` and ``exact_sinc`` voxels are all
    simulated as boxes, ``point`` voxels as a point and ``gauss`` custom voxels as a Gaussian of
    standard deviation ``voxel_size / 2``.
Spin samples
    Both the T2′ offsets and the positions come from one ``[spins, 4]`` sample of the unit cube,
    pushed through the inverse CDFs: ``spin_dist="r2"`` uses the R2 quasi-random sequence
    (Roberts 2018, the generalised golden ratio sequence ``u_n = frac(seed + n·α)``, ``n = 0 …
    spins−1``, ``seed = r2_seed``, 0.5 by default), ``"rand"`` uses ``torch.rand`` with a
    generator seeded from ``r2_seed`` (0 by default). The same spin pattern is used in every voxel,
    so every voxel has the same (sampled) shape, like the PDG's voxel response.
Diffusion
    Always on (set ``D = 0`` to switch it off): every spin does an independent Brownian walk
    (``D`` in 10⁻³ mm²/s = 10⁻⁹ m²/s, variance ``2 D dt`` per axis and event). The gradient
    moment of an event is taken as played at a constant rate through the event, as in the PDG,
    so the phase a spin gains in it is ``2π Δk · (r + mean displacement over the event)``.
    For each event the walk's increment ``ΔW`` and its time average ``A`` are drawn jointly
    and exactly (``ΔW ~ N(0, 2D dt)``, ``A = ΔW/2 + N(0, 2D dt / 12)``), so a PGSE gives
    ``exp(−bD)`` with ``b = (2πG)² δ² (Δ − δ/3)`` even with one event per lobe. The generator
    is seeded like the spin samples, so results are reproducible (for a given voxel chunking).
    Spins are not confined to their voxel.
Motion
    A moving phantom (``phantom_motion``/``voxel_motion``, :mod:`mr0core.sim.motion`) moves each
    voxel's spins with its centre: in every event the centre is taken at the event's midpoint
    (the spin offsets keep their orientation). Not available with ``rf_model="shaped"``.
``perfect_spoiling``
    Sets all ``m+`` to zero right before every excitation pulse (usage ``EXCIT``), as MR-zero
    does; refocusing and other pulses act on the transverse magnetisation as it is.
``rf_model="shaped"``
    Pulses that carry an :class:`~mr0core.sequence.RfWaveform` are played in time: every event
    that overlaps a waveform (before its centre, in the previous repetition's events, and after
    it) is cut at the waveform's raster steps, and each piece is an exact rotation of every spin
    about its own effective field ``(2π Re B, 2π Im B, −2π (Ġ·r + Δf))``, with the event's
    gradient played at its constant mean rate ``Ġ`` (the event model's, independent of the
    waveform's stored gradient), the spin's position, B0 and T2′ offset, ``B = b1 · (angle /
    waveform angle) · e^{i(phase − waveform phase)} · B1eff``, followed by the piece's
    relaxation. So relaxation during the pulse is included here. Within such pieces a diffusing
    spin keeps its position of the event's start (the walk advances after the event).
    ``perfect_spoiling`` is not available with it.

Everything is plain differentiable torch (no in-place operations), in float32 / complex64 on the
phantom's device. Large problems (more than ``_CHUNK_ELEMENTS`` voxel × spin elements) are
simulated in chunks of voxels whose signals are summed.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from tqdm import tqdm

from mr0core.sequence import PulseUsage

from .motion import MotionSampler, event_midpoints
from .rf import effective_b1
from .shaped import ShapedRfError, check_rf_model, step_rotation, warn_no_waveforms

if TYPE_CHECKING:
    from mr0core.phantom.sim_data import SimData
    from mr0core.sequence import Repetition, Sequence

__all__ = ["isochromat_sim"]

_MAX_SPINS = 100_000
_CHUNK_ELEMENTS = 20_000_000  # voxels x spins per chunk
_D_SI = 1e-9  # 10^-3 mm^2/s in m^2/s
_U_EPS = 1e-6  # clip of the unit samples before the inverse CDFs (no infinities)
_TWO_PI = 2 * math.pi
_DIMS = 4  # T2' offset, x, y, z


@dataclass
class _Pieces:
    """RF pieces within one event: durations ``h [m]`` s and B1 ``b [m]`` complex Hz."""

    h: torch.Tensor
    b: torch.Tensor
    shim: torch.Tensor  # [tx, 2] of the pulse the pieces belong to
    owner: int  # that pulse's repetition


@dataclass
class _Rep:
    """A repetition prepared for the simulation (tensors on the phantom device)."""

    index: int  # in the sequence, for messages
    excitation: bool  # the pulse's usage is EXCIT
    angle: torch.Tensor  # 0-d, rad
    phase: torch.Tensor  # 0-d, rad
    shim: torch.Tensor  # [tx, 2]
    dt: torch.Tensor  # [events] s
    dt_list: list[float]
    k: torch.Tensor  # [events, 3] 1/m (physical)
    adc_phase: torch.Tensor  # [events]
    adc: list[bool]
    times: torch.Tensor  # [events] absolute event midpoints, s (for motion)
    shaped: bool = False  # the pulse is played by RF pieces in the events (rf_model="shaped")
    pieces: dict[int, _Pieces] | None = None  # event -> RF pieces played in it


def isochromat_sim(
    seq: Sequence,
    data: SimData,
    spin_count: int,
    perfect_spoiling: bool = False,
    print_progress: bool = True,
    spin_dist: Literal["rand", "r2"] = "rand",
    r2_seed: torch.Tensor | float | None = None,
    *,
    rf_model: str = "instantaneous",
) -> torch.Tensor:
    """Simulate ``seq`` on ``data`` with ``spin_count`` isochromats per voxel.

    See the module documentation for the model.

    Parameters
    ----------
    seq
        The sequence.
    data
        The phantom (``build()`` output).
    spin_count
        Isochromats per voxel, 1 … 100000.
    perfect_spoiling
        If True, the transverse magnetisation is set to zero before every excitation pulse
        (usage ``EXCIT``).
    print_progress
        Show a tqdm progress bar over the repetitions.
    spin_dist
        ``"rand"`` (pseudo-random) or ``"r2"`` (R2 quasi-random sequence) spin samples.
    r2_seed
        Offset of the R2 sequence (scalar or one value per dimension: T2′, x, y, z; default 0.5),
        or the seed of the random generator for ``"rand"`` (default 0). Also seeds diffusion.
    rf_model
        ``"instantaneous"`` (default) or ``"shaped"``: pulses with waveforms played step by step
        (module documentation).

    Returns
    -------
    torch.Tensor
        ``[ADC samples, coils]`` complex64 signal on the phantom's device, samples in the order of
        repetitions and events.

    Raises
    ------
    ValueError
        For a bad ``spin_count``, ``spin_dist`` or ``r2_seed``, or a pulse whose shim channels do
        not match the phantom's B1 channels.
    """
    spins = _check_spin_count(spin_count)
    if spin_dist not in ("rand", "r2"):
        raise ValueError(f"spin_dist must be 'rand' or 'r2', got {spin_dist!r}")
    dev = data.device
    fdt = torch.float32
    samples = _unit_samples(spins, spin_dist, r2_seed, dev, fdt)  # [spins, 4]
    u = samples.clamp(_U_EPS, 1 - _U_EPS)
    cauchy = torch.tan(math.pi * (u[:, 0] - 0.5))  # [spins], unit half width
    offsets = _spin_offsets(data, u[:, 1:], fdt)  # [spins, 3] m
    starts = np.concatenate([[0.0], np.cumsum([float(r.event_time.detach().double().sum())
                                               for r in seq])])  # fmt: skip
    reps = [_prepare(rep, data, seq.normalized_grads, i, starts[i]) for i, rep in enumerate(seq)]
    moving = data.voxel_motion is not None or data.phantom_motion is not None
    if check_rf_model(rf_model) == "shaped":
        if moving:
            raise ShapedRfError("isochromat_sim: rf_model='shaped' with a moving phantom is not "
                                "simulated yet")  # fmt: skip
        if perfect_spoiling:
            raise ShapedRfError("isochromat_sim: perfect_spoiling is not available with "
                                "rf_model='shaped'")  # fmt: skip
        warn_no_waveforms(seq)
        _attach_rf_pieces(seq, reps, data)
    n_coils = data.coil_sens.shape[0]
    n_vox = data.voxel_count
    chunk = max(1, _CHUNK_ELEMENTS // spins)
    chunks = list(range(0, n_vox, chunk))
    gen = torch.Generator(device=dev)
    gen.manual_seed(_seed(r2_seed))

    signal: torch.Tensor | None = None
    with tqdm(total=len(reps) * len(chunks), desc="isochromat", disable=not print_progress) as bar:
        for start in chunks:
            part = _simulate(
                reps, data, slice(start, start + chunk), cauchy, offsets, perfect_spoiling, gen,
                bar,
            )  # fmt: skip
            signal = part if signal is None else signal + part
    if signal is None:  # no voxels
        n_adc = sum(sum(r.adc) for r in reps)
        signal = torch.zeros(n_adc, n_coils, dtype=torch.complex64, device=dev)
    return signal.to(torch.complex64)


def _check_spin_count(spin_count: int) -> int:
    if isinstance(spin_count, bool):
        raise ValueError(f"spin_count must be an integer, got {spin_count!r}")
    try:
        spins = operator.index(spin_count)
    except TypeError:
        raise ValueError(f"spin_count must be an integer, got {spin_count!r}") from None
    if not 1 <= spins <= _MAX_SPINS:
        raise ValueError(f"spin_count must be between 1 and {_MAX_SPINS}, got {spins}")
    return spins


def _seed_tensor(r2_seed: torch.Tensor | float | None, dev: torch.device) -> torch.Tensor | None:
    if r2_seed is None:
        return None
    seed = torch.as_tensor(r2_seed, device=dev)
    if seed.is_complex() or seed.numel() not in (1, _DIMS):
        raise ValueError(
            f"r2_seed must be a real scalar or have {_DIMS} entries, got shape {tuple(seed.shape)}"
        )
    if not bool(torch.isfinite(seed.detach()).all()):
        raise ValueError(f"r2_seed must be finite, got {seed}")
    return seed.flatten()


def _seed(r2_seed: torch.Tensor | float | None) -> int:
    """Integer seed of the random generators: 0 by default, else derived from ``r2_seed``."""
    seed = _seed_tensor(r2_seed, torch.device("cpu"))
    if seed is None:
        return 0
    values = seed.detach().double().tolist()
    mixed = 0
    for v in values:  # integer seeds map to themselves (for one value)
        mixed = mixed * 1_000_003 + (int(v) if float(v).is_integer() else int(v * 2**32))
    return mixed % 2**63


def _r2_alphas(dims: int) -> torch.Tensor:
    """Return the R2 increments ``1 / φ_d^j``, j = 1 … dims (φ_d: root of x^(d+1) = x + 1)."""
    phi = 2.0
    for _ in range(100):
        phi = (1 + phi) ** (1 / (dims + 1))
    return torch.tensor([phi ** (-j) for j in range(1, dims + 1)], dtype=torch.float64)


def _unit_samples(
    spins: int, spin_dist: str, r2_seed: torch.Tensor | float | None, dev: torch.device,
    fdt: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """Return ``[spins, 4]`` samples of the unit cube."""
    seed = _seed_tensor(r2_seed, dev)
    if spin_dist == "rand":
        gen = torch.Generator(device=dev)
        gen.manual_seed(_seed(r2_seed))
        return torch.rand(spins, _DIMS, generator=gen, device=dev, dtype=fdt)
    # n·α in float64: float32 would lose the fractional part for large n
    n = torch.arange(spins, dtype=torch.float64)
    base = torch.remainder(n[:, None] * _r2_alphas(_DIMS)[None, :], 1.0).to(dev, fdt)
    offset = torch.full((1,), 0.5, dtype=fdt, device=dev) if seed is None else seed.to(fdt)
    return torch.remainder(base + offset, 1.0)


def _spin_offsets(data: SimData, u: torch.Tensor, fdt: torch.dtype) -> torch.Tensor:
    """Return the spin positions ``[spins, 3]`` relative to the voxel centre, in m."""
    nyquist = data.nyquist.to(u.device, fdt)
    shape = data.dephasing_func
    name = getattr(shape, "name", "box")
    voxel_size = getattr(shape, "voxel_size", None)
    fallback = (
        torch.zeros(3, dtype=fdt, device=u.device)
        if voxel_size is None
        else torch.tensor(voxel_size, dtype=fdt, device=u.device)
    )
    edge = torch.where(torch.isfinite(nyquist), 0.5 / nyquist, fallback)
    if name == "point":
        return torch.zeros_like(u)
    if name == "gauss":
        return math.sqrt(2) * torch.erfinv(2 * u - 1) * (edge / 2)
    return (u - 0.5) * edge


def _prepare(rep: Repetition, data: SimData, normalized: bool, index: int, start: float) -> _Rep:
    """Move a repetition (starting at ``start`` s) to the phantom device; moments in 1/m."""
    dev, fdt = data.device, torch.float32
    gradm = rep.gradm.to(dev, fdt)
    if normalized:
        gradm = gradm / data.size.to(dev, fdt)
    shim = rep.pulse.shim_array.to(dev, fdt)
    tx = data.B1.shape[0]
    if shim.shape[0] not in (1, tx):
        raise ValueError(
            f"repetition {index}: the pulse has {shim.shape[0]} shim channels, the phantom "
            f"{tx} B1 channels"
        )
    dt = rep.event_time.to(dev, fdt)
    return _Rep(
        index=index,
        excitation=rep.pulse.usage == PulseUsage.EXCIT,
        angle=rep.pulse.angle.to(dev, fdt),
        phase=rep.pulse.phase.to(dev, fdt),
        shim=shim,
        dt=dt,
        dt_list=dt.detach().cpu().tolist(),
        k=gradm,
        adc_phase=rep.adc_phase.to(dev, fdt),
        adc=[bool(a > 0) for a in rep.adc_usage.tolist()],
        times=event_midpoints(rep.event_time.to(dev), start),
    )


def _attach_rf_pieces(seq: Sequence, reps: list[_Rep], data: SimData) -> None:
    """Cut the events that overlap a waveform into RF pieces (``rep.pieces``), in place."""
    dev = data.device
    durations = [float(np.sum(r.dt_list)) for r in reps]
    rep_start = np.concatenate([[0.0], np.cumsum(durations)])
    for r, (rep, prep) in enumerate(zip(seq, reps, strict=True)):
        wave = rep.pulse.waveform
        if wave is None:
            continue
        prep.shaped = True
        scale = rep.pulse.angle / wave.angle if wave.angle > 0 else torch.ones(())
        b1 = (wave.b1.to(torch.complex128) * scale.to(torch.float64)
              * torch.exp(1j * (rep.pulse.phase.to(torch.float64) - wave.phase)))  # fmt: skip
        edges = (
            rep_start[r]
            - wave.center
            + np.concatenate([[0.0], np.cumsum(wave.dt.detach().double().cpu().numpy())])
        )
        for q in range(r, -1, -1):  # the repetitions the waveform overlaps (it ends after r)
            if q < r and rep_start[q + 1] <= edges[0]:
                break
            _cut_rep(reps[q], rep_start[q], edges, b1, prep.shim, r, dev)
            if rep_start[q] <= edges[0]:
                break
        if edges[-1] > rep_start[-1] + 1e-12 or edges[0] < -1e-12:
            raise ShapedRfError(
                f"repetition {r}: the pulse's waveform reaches outside the sequence "
                f"({edges[0]:g} s to {edges[-1]:g} s)"
            )


def _cut_rep(
    prep: _Rep, start: float, edges: np.ndarray, b1: torch.Tensor, shim: torch.Tensor,
    owner: int, dev: torch.device,
) -> None:  # fmt: skip
    """Add the RF pieces of the waveform (absolute ``edges``, ``b1``) to the events of ``prep``."""
    t = start + np.concatenate([[0.0], np.cumsum(prep.dt_list)])
    for e in range(len(prep.dt_list)):
        t0, t1 = t[e], t[e + 1]
        if t1 <= edges[0] or t0 >= edges[-1] or t1 <= t0:
            continue
        inner = edges[(edges > t0) & (edges < t1)]
        cuts = np.concatenate([[t0], inner, [t1]])
        mid = 0.5 * (cuts[1:] + cuts[:-1])
        step = np.searchsorted(edges, mid, side="right") - 1
        on = (step >= 0) & (step < len(b1))
        values = torch.zeros(len(mid), dtype=torch.complex128).index_put(
            (torch.from_numpy(np.flatnonzero(on)),), b1.cpu()[torch.from_numpy(step[on])]
        )
        h = torch.from_numpy(np.diff(cuts))
        if prep.pieces is None:
            prep.pieces = {}
        if e in prep.pieces:
            raise ShapedRfError(
                f"repetition {owner}: its waveform overlaps another pulse's in one event"
            )
        prep.pieces[e] = _Pieces(
            h.to(dev, torch.float32), values.to(dev, torch.complex64), shim, owner
        )


def _rf_event(
    mp: torch.Tensor, mz: torch.Tensor, pieces: _Pieces, b1eff: torch.Tensor,
    cycles_rate: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Play one event's RF pieces: exact rotation then relaxation, piece by piece.

    ``cycles_rate [V, S]``: each spin's free precession (Hz: gradient rate · position +
    off-resonance); ``b1eff [V, 1]`` complex.
    """
    for j in range(len(pieces.h)):
        h = pieces.h[j]
        field = pieces.b[j] * b1eff  # [V, 1] Hz
        a, b = step_rotation(field.real, field.imag, cycles_rate, h)
        ac = a.conj()
        mp, mz = (ac * ac * mp - b * b * mp.conj() + 2 * ac * b * mz,
                  (a.abs() ** 2 - b.abs() ** 2) * mz - 2 * (ac * b.conj() * mp).real)  # fmt: skip
        e1 = torch.exp(-h / t1)
        mp = mp * torch.exp(-h / t2)
        mz = mz * e1 + (1 - e1)
    return mp, mz


def _pulse(
    mp: torch.Tensor, mz: torch.Tensor, angle: torch.Tensor, phase: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by ``angle`` about ``(cos phase, sin phase, 0)`` (``angle``, ``phase``: [V, 1])."""
    c2 = torch.cos(angle / 2) ** 2
    s2 = torch.sin(angle / 2) ** 2
    sa = torch.sin(angle)
    e = torch.polar(torch.ones_like(phase), phase)
    mp_new = c2 * mp + e * e * s2 * mp.conj() - 1j * e * sa * mz
    mz_new = torch.cos(angle) * mz + sa * (e.conj() * mp).imag
    return mp_new, mz_new


def _simulate(
    reps: list[_Rep], data: SimData, sl: slice, cauchy: torch.Tensor, offsets: torch.Tensor,
    perfect_spoiling: bool, gen: torch.Generator, bar: tqdm,
) -> torch.Tensor:  # fmt: skip
    """Simulate the voxels ``sl``; return their summed signal ``[samples, coils]``."""
    dev, fdt, cdt = data.device, torch.float32, torch.complex64
    pos = data.voxel_pos[sl].to(dev, fdt)  # [V, 3]
    motion = MotionSampler.of(data, data.voxel_pos.to(dev, fdt))
    t1 = data.T1[sl].to(fdt).clamp_min(1e-12)[:, None]
    t2 = data.T2[sl].to(fdt).clamp_min(1e-12)[:, None]
    t2d = data.T2dash[sl].to(fdt).clamp_min(1e-12)[:, None]
    diff = data.D[sl].to(fdt).clamp_min(0)[:, None, None] * _D_SI  # [V, 1, 1] m^2/s
    pd_coil = data.coil_sens[:, sl].to(cdt) * data.PD[sl].to(fdt)  # [C, V]
    b1 = data.B1[:, sl].to(cdt)  # [tx, V]
    df = data.B0[sl].to(fdt)[:, None] + cauchy[None, :] / (_TWO_PI * t2d)  # [V, S] Hz
    n_vox, n_spins = df.shape
    diffusing = bool((diff > 0).any())
    walk: torch.Tensor | None = None  # [V, S, 3] random-walk displacement
    mp = torch.zeros(n_vox, n_spins, dtype=cdt, device=dev)
    mz = torch.ones(n_vox, n_spins, dtype=fdt, device=dev)
    out: list[torch.Tensor] = []
    for rep in reps:
        if perfect_spoiling and rep.excitation:
            mp = torch.zeros_like(mp)
        b1eff = effective_b1(rep.shim, b1, rep.index)  # [V]
        if not rep.shaped:
            angle = (rep.angle * b1eff.abs())[:, None]
            phase = (rep.phase + torch.angle(b1eff))[:, None]
            mp, mz = _pulse(mp, mz, angle, phase)
        moved = None if motion is None else motion.positions(rep.times)[:, sl]  # [E, V, 3]
        for e in range(len(rep.adc)):
            dt, k = rep.dt[e], rep.k[e]
            pieces = rep.pieces.get(e) if rep.pieces is not None else None
            if pieces is not None and rep.dt_list[e] > 0:
                # the B1 of the pulse whose waveform plays here (maybe the next repetition's)
                owner = effective_b1(pieces.shim, b1, pieces.owner)
                rel = offsets if walk is None else offsets[None] + walk
                rate = ((pos @ k)[:, None] + (rel @ k)) / dt + df  # [V, S] Hz
                mp, mz = _rf_event(mp, mz, pieces, owner[:, None], rate, t1, t2)
                if diffusing:
                    std = torch.sqrt(torch.clamp(2 * diff * dt, min=1e-30))
                    z = torch.randn(n_vox, n_spins, 3, generator=gen, device=dev, dtype=fdt)
                    walk = z * std if walk is None else walk + z * std
                if rep.adc[e]:
                    rot = torch.polar(torch.ones_like(rep.adc_phase[e]), rep.adc_phase[e])
                    out.append((pd_coil * mp.mean(dim=1)).sum(dim=1) * rot)
                continue
            # gradient phase k·r with r = voxel position (at the event's midpoint when the
            # phantom moves) + spin offset (+ random walk)
            centre = pos if moved is None else moved[e]
            cycles = (centre @ k)[:, None] + (offsets @ k)[None, :] + df * dt
            if diffusing and rep.dt_list[e] > 0:
                # the walk during the event: increment and time average, drawn jointly (module
                # documentation); sqrt has an infinite derivative at 0 (D = 0 voxels): clamp
                std = torch.sqrt(torch.clamp(2 * diff * dt, min=1e-30))
                z = torch.randn(2, n_vox, n_spins, 3, generator=gen, device=dev, dtype=fdt)
                step = z[0] * std
                mean_offset = step / 2 + z[1] * (std / math.sqrt(12))
                start = mean_offset if walk is None else walk + mean_offset
                cycles = cycles + start @ k
                walk = step if walk is None else walk + step
            elif walk is not None:
                cycles = cycles + walk @ k
            mp = mp * torch.polar(torch.exp(-dt / t2), -_TWO_PI * cycles)
            e1 = torch.exp(-dt / t1)
            mz = mz * e1 + (1 - e1)
            if rep.adc[e]:
                rot = torch.polar(torch.ones_like(rep.adc_phase[e]), rep.adc_phase[e])
                out.append((pd_coil * mp.mean(dim=1)).sum(dim=1) * rot)
        bar.update(1)
    if not out:
        return torch.zeros(0, pd_coil.shape[0], dtype=cdt, device=dev)
    return torch.stack(out)

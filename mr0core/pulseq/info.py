"""A summary of a ``.seq`` file, as printed by ``mr0 seq-info``."""

from __future__ import annotations

import math
from collections import Counter
from os import PathLike
from typing import Any

import numpy as np

from mr0core.pulseq.convert import seq_to_sequence
from mr0core.pulseq.reader import read_seq

__all__ = ["format_seq_info", "seq_info"]


def seq_info(path: str | PathLike[str]) -> dict[str, Any]:
    """Read a ``.seq`` file and summarise it.

    Returns
    -------
    dict
        JSON-serialisable: file, version, name, blocks, repetitions, duration_s, adc_samples,
        rf_pulses (groups of equal usage, angle and duration), kspace_extent (per axis min/max in
        1/m), tau_extent_s, labels (name → [min, max]), fov_m, rasters_s, triggers, soft_delays,
        signature (``"ok"``, ``"mismatch"`` or ``"none"``).
    """
    parsed = read_seq(path)
    seq, info = seq_to_sequence(parsed, return_info=True)
    kspace = seq.get_kspace().double().numpy()

    groups: Counter[tuple[str, float, float]] = Counter()
    rf_end = info.rf.end
    rf_start = parsed.rf.data[:, 5] if len(parsed.rf.ids) else np.zeros(0)
    for row in info.rf_rows.tolist():
        key = (
            info.rf.usage[row].name,
            round(math.degrees(info.rf.angle[row]), 3),
            round((rf_end[row] - rf_start[row]) * 1e6, 3),
        )
        groups[key] += 1
    rf_pulses = [
        {"usage": usage, "flip_angle_deg": angle, "duration_us": dur, "count": count}
        for (usage, angle, dur), count in sorted(groups.items(), key=lambda kv: -kv[1])
    ]

    labels = {
        name: [int(values.min()), int(values.max())] if len(values) else [0, 0]
        for name, values in seq.get_labels().items()
    }
    if len(kspace):
        extent = {
            axis: [float(kspace[:, i].min()), float(kspace[:, i].max())]
            for i, axis in enumerate(("kx", "ky", "kz"))
        }
        tau = [float(kspace[:, 3].min()), float(kspace[:, 3].max())]
    else:
        extent = {axis: [0.0, 0.0] for axis in ("kx", "ky", "kz")}
        tau = [0.0, 0.0]
    name = parsed.definitions.get("Name")
    if name and all(t.isdigit() and 32 <= int(t) < 127 for t in name):
        name = ["".join(chr(int(t)) for t in name)]  # old MATLAB Pulseq wrote character codes
    signature = {True: "ok", False: "mismatch", None: "none"}[parsed.signature_ok]
    return {
        "file": str(path),
        "version": parsed.version_str,
        "name": " ".join(name) if name else None,
        "blocks": len(parsed.blocks),
        "repetitions": len(seq),
        "duration_s": seq.get_duration(),
        "adc_samples": len(kspace),
        "rf_pulses": rf_pulses,
        "kspace_extent": extent,
        "tau_extent_s": tau,
        "labels": labels,
        "fov_m": parsed.definition_floats("FOV"),
        "rasters_s": {
            key: parsed.raster(key)
            for key in (
                "GradientRasterTime",
                "RadiofrequencyRasterTime",
                "AdcRasterTime",
                "BlockDurationRaster",
            )
        },
        "triggers": info.trigger_count,
        "soft_delays": info.soft_delay_hints,
        "signature": signature,
    }


def format_seq_info(info: dict[str, Any]) -> str:
    """Render :func:`seq_info`'s result as aligned text."""
    lines = [
        f"file            {info['file']}",
        f"format          Pulseq {info['version']}"
        + (f"  ({info['name']})" if info["name"] else ""),
        f"blocks          {info['blocks']}",
        f"repetitions     {info['repetitions']}",
        f"duration        {info['duration_s']:.6g} s",
        f"ADC samples     {info['adc_samples']}",
    ]
    total = sum(p["count"] for p in info["rf_pulses"])
    lines.append(f"RF pulses       {total}")
    for p in info["rf_pulses"]:
        lines.append(
            f"  {p['count']:6d} x {p['usage']:<6s} {p['flip_angle_deg']:9.3f} deg "
            f"{p['duration_us']:10.1f} us"
        )
    lines.append("k-space extent  (1/m)")
    for axis, (lo, hi) in info["kspace_extent"].items():
        lines.append(f"  {axis}  {lo:12.3f} .. {hi:12.3f}")
    lo, hi = info["tau_extent_s"]
    lines.append(f"  tau {lo * 1e3:11.4f} .. {hi * 1e3:12.4f} ms")
    if info["labels"]:
        labels = ", ".join(f"{k} {v[0]}..{v[1]}" for k, v in info["labels"].items())
        lines.append(f"labels          {labels}")
    else:
        lines.append("labels          none")
    if info["fov_m"]:
        lines.append("FOV             " + " x ".join(f"{v * 1e3:g}" for v in info["fov_m"]) + " mm")
    if info["triggers"]:
        lines.append(f"triggers        {info['triggers']}")
    if info["soft_delays"]:
        lines.append(f"soft delays     {', '.join(info['soft_delays'])}")
    lines.append(f"signature       {info['signature']}")
    return "\n".join(lines)

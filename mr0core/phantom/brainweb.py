"""BrainWeb NIfTI phantoms: ``generate_brainweb_phantoms``, as MR-zero's function of that name.

The anatomy comes from BrainWeb's 20 normal anatomical models (Aubert-Broche et al., "Twenty new
digital brain phantoms for creation of validation image data bases", IEEE Trans Med Imaging
25:1410–1416, 2006; http://brainweb.bic.mni.mcgill.ca/brainweb/anatomic_normal_20.html). Each
model is a set of "fuzzy" tissue-membership volumes, one per tissue class, on a 0.5 mm isotropic
grid of 362 × 434 × 362 voxels (z, y, x; x varies fastest). BrainWeb's download service
(``brainweb1`` CGI) sends each volume as gzip-compressed raw unsigned bytes (``raw_byte``, no
header), scaled to 0…255. The data are not redistributed with mr0core: they are downloaded once
into ``<output_dir>/cache/`` and the phantoms are built from there.

The physical properties are literature values written down below (:data:`TISSUE_VALUES`), with
their sources; they are not MR-zero's ``brainweb_data.json``. Values marked *assumption* have no
single measurement behind them and are chosen to be plausible; change them in the generated JSON
files (or in the loaded :class:`~mr0core.TissueDict`) where a study needs other values.

Downloads are the only network access; they need BrainWeb's server (or a mirror, see
:func:`generate_brainweb_phantoms`'s ``base_url``). Without it the function stops with a one-line
:class:`~mr0core.util.PhantomDownloadError`; the built-in brain (``mr0 phantom brain``) needs no
download.
"""

from __future__ import annotations

import gzip
import http.client
import io
import math
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from os import PathLike, fspath
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from mr0core.util import DOWNLOAD_TIMEOUT_S, PhantomDownloadError

from .nifti import NiftiPhantom, NiftiRef, NiftiTissue, PhantomSystem, PhantomUnits

__all__ = [
    "BRAINWEB_URL",
    "CONFIGS",
    "SOURCE_SHAPE",
    "SUBJECTS",
    "TISSUE_VALUES",
    "BrainWebDataError",
    "TissueValues",
    "generate_brainweb_phantoms",
]

BRAINWEB_URL = "https://brainweb.bic.mni.mcgill.ca/cgi/brainweb1"
"""BrainWeb's download service; ``?do_download_alias=subject04_wht&...`` selects a volume."""

URL_ENV = "MR0_BRAINWEB_URL"
"""Environment variable naming a mirror that replaces :data:`BRAINWEB_URL` (``base_url`` wins)."""

SUBJECTS = ("04", "05", "06", "18", "20", "38", "41", "42", "43", "44",
            "45", "46", "47", "48", "49", "50", "51", "52", "53", "54")  # fmt: skip
"""The 20 BrainWeb normal subjects, in the order ``subject_count`` takes them."""

SOURCE_SHAPE = (362, 434, 362)
"""(z, y, x) voxels of BrainWeb's volumes (0.5 mm isotropic, x varies fastest in the file)."""

SOURCE_VOXEL_MM = 0.5
"""Voxel size of BrainWeb's volumes in mm."""

CONFIGS = ("3T", "7T-noise", "3T-highres-fat")
"""The phantom configurations MR-zero documents; each becomes ``subjNN/subjNN-<config>.json``."""

# BrainWeb's class aliases (``subjectNN_<alias>``) and our tissue names. Background and skull are
# downloaded only to normalise the memberships (they complete the partition of each voxel); they
# get no tissue: air has no signal, and cortical bone (T2* ≈ 0.4–0.5 ms, Reichert et al., Magn
# Reson Imaging 23:611–618, 2005) is invisible to all but ultrashort-echo sequences.
_CLASSES: tuple[tuple[str, str | None], ...] = (
    ("bck", None),
    ("csf", "csf"),
    ("gry", "gm"),
    ("wht", "wm"),
    ("fat", "fat"),
    ("mus", "muscle"),
    ("m-s", "muscle_skin"),
    ("skl", None),
    ("ves", "vessels"),
    ("fat2", "around_fat"),
    ("dura", "dura"),
    ("mrw", "marrow"),
)
_TISSUES = tuple(name for _, name in _CLASSES if name is not None)
_FAT_TISSUES = ("fat", "around_fat", "marrow")  # on the fat resonance in "3T-highres-fat"

#: Chemical shift of fat's main (methylene, 1.3 ppm) peak relative to water (4.7 ppm), in ppm:
#: the dominant peak of the fat spectrum (Hamilton et al., "In vivo characterization of the
#: liver fat ¹H MR spectrum", NMR Biomed 24:784–790, 2011). The smaller peaks are not modelled.
FAT_SHIFT_PPM = -3.4

_CHUNK = 1 << 16
_GZIP_LEVEL = 6


class BrainWebDataError(ValueError):
    """Downloaded or cached BrainWeb data that are not a complete volume (truncated, corrupt)."""


@dataclass(frozen=True)
class TissueValues:
    """Physical properties of one tissue at one field strength.

    Attributes
    ----------
    PD
        Proton density relative to pure water (a voxel's density is membership × PD).
    T1, T2, T2dash
        Relaxation times in s (T2′: reversible dephasing, 1/T2* = 1/T2 + 1/T2′).
    ADC
        Apparent diffusion coefficient in 10⁻³ mm²/s.
    """

    PD: float
    T1: float
    T2: float
    T2dash: float
    ADC: float


def _t2dash(t2star: float, t2: float) -> float:
    """T2′ (s) from 1/T2′ = 1/T2* - 1/T2, rounded to 0.1 ms."""
    return round(1.0 / (1.0 / t2star - 1.0 / t2), 4)


# ---------------------------------------------------------------------------------------------
# Literature values (T1, T2, T2', T2* in s; ADC in 10⁻³ mm²/s; PD relative to water)
#
# GM, WM
#   T1, T2 at 3 T: Stanisz et al., "T1, T2 relaxation and magnetization transfer in tissue at
#     3T", Magn Reson Med 54:507–512 (2005): GM 1.820 / 0.099, WM 1.084 / 0.069.
#   T1 at 7 T: Rooney et al., "Magnetic field and tissue dependencies of human brain
#     longitudinal ¹H₂O relaxation in vivo", Magn Reson Med 57:308–318 (2007): GM 2.13, WM 1.22.
#   T2 at 7 T: Cox & Gowland, "Simultaneous quantification of T2 and T2' using a combined
#     gradient echo-spin echo sequence at ultrahigh field", Magn Reson Med 64:1440–1445 (2010):
#     frontal GM and WM 0.047.
#   T2*: Peters et al., "T2* measurements in human brain at 1.5, 3 and 7 T", Magn Reson Imaging
#     25:748–753 (2007): GM 0.066 / 0.0332, WM 0.053 / 0.0268 at 3 / 7 T; T2' from T2* and T2.
#   PD: water content GM 0.80, WM 0.70 (Neeb, Zilles & Shah, NeuroImage 31:1156–1168, 2006).
#   ADC: GM 0.8, WM 0.7 (Helenius et al., AJNR 23:194–199, 2002; rounded).
# CSF
#   T1 4.3 at every field (Rooney et al. 2007: CSF T1 does not depend on B0); T2 ≈ 2.0 at 3 T
#   and ≈ 1.0 at 7 T (Spijkerman et al., "T2 mapping of cerebrospinal fluid: 3 T versus 7 T",
#   MAGMA 31:415–424, 2018: CSF T2 is about halved at 7 T; rounded). T2' 0.6 at 3 T, as the
#   built-in brain (ASLDRO's CSF T2*/T2), scaled ∝ 1/B0 to 7 T (static dephasing, Yablonskiy &
#   Haacke, Magn Reson Med 32:749–763, 1994). PD 1.0 (water). ADC 3.0 (free water at 37 °C,
#   Holz, Heil & Sacco, Phys Chem Chem Phys 2:4740–4742, 2000).
# Vessels (blood)
#   3 T: T1 1.932, T2 0.275 (Stanisz et al. 2005). 7 T: T1 ≈ 2.1 (Zhang et al., "In vivo
#   blood T1 measurements at 1.5 T, 3 T, and 7 T", Magn Reson Med 70:1082–1086, 2013;
#   rounded), T2 ≈ 0.07 for arterial blood (Krishnamurthy et al., "Dependence of blood T2 on
#   oxygenation at 7 T", Magn Reson Med 71:2035–2042, 2014; strongly oxygenation-dependent,
#   approximate). PD 0.85 (water content of whole blood, approximate). T2' as GM and ADC 1.6
#   (water in blood, without flow): assumptions.
# Fat (subcutaneous), also "around_fat" (fatty connective tissue; assumption)
#   3 T: T1 0.382, T2 0.068 (Gold et al., "Musculoskeletal MRI at 3.0 T: relaxation times and
#   image contrast", AJR 183:343–351, 2004). 7 T: T1 0.583, T2 0.046 (Jordan et al.,
#   "Musculoskeletal MRI at 3.0 T and 7.0 T: a comparison of relaxation times and image
#   contrast", Eur J Radiol 82:734–739, 2013). PD 0.9 (¹H density of adipose tissue relative to
#   water, approximate). ADC 0.02 (lipid self-diffusion is about two orders of magnitude slower
#   than water's; approximate). T2' as GM: assumption.
# Muscle, also "muscle_skin" (assumption: skin as muscle)
#   3 T: T1 1.412, T2 0.050 (Stanisz et al. 2005). 7 T: T1 1.552, T2 0.023 (Jordan et al.
#   2013). PD 0.8 (water content of skeletal muscle, about 0.75–0.8; approximate). ADC 1.5
#   (skeletal muscle, approximate). T2' as GM: assumption.
# Dura (dense collagenous connective tissue): assumptions throughout. PD 0.7; T1 1.0 / 1.2 at
#   3 / 7 T; T2 0.01 (collagen-rich tissue has T2 of a few to ~10 ms); T2' as GM; ADC 0.5.
# Marrow (diploë, adult: mostly fatty)
#   T1, T2 as fat (assumption: fatty marrow). T2' 7.5 ms at 3 T (order of magnitude of
#   trabecular-bone T2', Wehrli et al., NMR Biomed 19:731–764, 2006; approximate), ∝ 1/B0.
#   ADC 0.4 (fatty bone marrow ≈ 0.2–0.6, Dietrich et al., NMR Biomed 30:e3333, 2017). PD 0.8
#   (fatty marrow between trabecular bone; assumption).
# ---------------------------------------------------------------------------------------------
_GM = {"3T": (1.820, 0.099, 0.066), "7T": (2.13, 0.047, 0.0332)}  # T1, T2, T2*
_WM = {"3T": (1.084, 0.069, 0.053), "7T": (1.22, 0.047, 0.0268)}


def _values(field: str) -> dict[str, TissueValues]:
    b0 = {"3T": 3.0, "7T": 7.0}[field]
    gm_t1, gm_t2, gm_t2s = _GM[field]
    wm_t1, wm_t2, wm_t2s = _WM[field]
    gm_t2dash = _t2dash(gm_t2s, gm_t2)
    fat = {"3T": (0.382, 0.068), "7T": (0.583, 0.046)}[field]
    muscle = {"3T": (1.412, 0.050), "7T": (1.552, 0.023)}[field]
    blood = {"3T": (1.932, 0.275), "7T": (2.1, 0.07)}[field]
    fat_values = TissueValues(0.9, fat[0], fat[1], gm_t2dash, 0.02)
    muscle_values = TissueValues(0.8, muscle[0], muscle[1], gm_t2dash, 1.5)
    return {
        "csf": TissueValues(1.0, 4.3, {"3T": 2.0, "7T": 1.0}[field], 0.6 * 3.0 / b0, 3.0),
        "gm": TissueValues(0.8, gm_t1, gm_t2, gm_t2dash, 0.8),
        "wm": TissueValues(0.7, wm_t1, wm_t2, _t2dash(wm_t2s, wm_t2), 0.7),
        "fat": fat_values,
        "muscle": muscle_values,
        "muscle_skin": muscle_values,
        "vessels": TissueValues(0.85, blood[0], blood[1], gm_t2dash, 1.6),
        "around_fat": fat_values,
        "dura": TissueValues(0.7, {"3T": 1.0, "7T": 1.2}[field], 0.01, gm_t2dash, 0.5),
        "marrow": TissueValues(0.8, fat[0], fat[1], 0.0075 * 3.0 / b0, 0.4),
    }


TISSUE_VALUES: dict[str, dict[str, TissueValues]] = {"3T": _values("3T"), "7T": _values("7T")}
"""Tissue name → :class:`TissueValues`, per field strength (``"3T"``, ``"7T"``); see the sources
in the module source above the table."""

#: "7T-noise" fields. B0: a smooth random off-resonance with this standard deviation over the
#: grid, in Hz: residual ΔB0 over the brain after second-order shimming at 7 T is a few tens of
#: Hz (e.g. Juchem et al., J Magn Reson 212:280–288, 2011; approximate).
B0_STD_7T_HZ = 30.0
#: B1+: relative transmit field 0.7 + 0.6·exp(-r²/(2σ²)) with r the distance from the grid
#: centre in half field-of-view units, σ below, plus a smooth random ±5 % part: the central
#: brightening of a 7 T head volume coil, about 1.3 in the centre and 0.8 at the edge (Vaughan
#: et al., "7T vs. 4T: RF power, homogeneity, and signal-to-noise comparison in head images",
#: Magn Reson Med 46:24–30, 2001; shape approximate).
B1_CENTRE_SIGMA = 0.5
_B1_RANDOM = 0.05
_FIELD_MODES = 4  # cosine modes per axis of the smooth random fields


@dataclass(frozen=True)
class _Config:
    """How one configuration is built."""

    field: str  # key of TISSUE_VALUES
    B0: float  # T
    highres: bool  # BrainWeb's 0.5 mm grid, else 1 mm
    fat_shift: bool  # fat tissues at fat's resonance
    fields: bool  # smooth B0 / B1+ maps


_CONFIG = {
    "3T": _Config("3T", 3.0, highres=False, fat_shift=False, fields=False),
    "7T-noise": _Config("7T", 7.0, highres=False, fat_shift=False, fields=True),
    "3T-highres-fat": _Config("3T", 3.0, highres=True, fat_shift=True, fields=False),
}


# ---------------------------------------------------------------------------------------------
# public function
# ---------------------------------------------------------------------------------------------


def generate_brainweb_phantoms(
    output_dir: str | PathLike[str],
    subject_count: int | None = None,
    *,
    config: str | SequenceABC[str] | None = None,
    base_url: str | None = None,
    source_shape: SequenceABC[int] = SOURCE_SHAPE,
) -> list[Path]:
    """Download BrainWeb's anatomical models and write them as NIfTI phantoms.

    For every subject ``NN`` (``04``, ``05``, … in :data:`SUBJECTS` order) and configuration,
    writes ``<output_dir>/subjNN/subjNN-<config>.json`` and its NIfTI files, loadable with
    :meth:`mr0core.TissueDict.load` (``TissueDict.load("out/subj05/subj05-3T.json")``). The
    downloaded volumes are kept in ``<output_dir>/cache/``; a file there is never downloaded
    again, so a second run (another configuration, a lost output) needs no network.

    Configurations:

    - ``"3T"``: 3 T tissue values, 1 mm grid (181 × 217 × 181: BrainWeb's 0.5 mm memberships
      averaged over 2 × 2 × 2 voxels), B0 and B1 ideal, fat on the water resonance.
    - ``"7T-noise"``: 7 T tissue values, 1 mm grid, plus a smooth random B0 map (standard
      deviation :data:`B0_STD_7T_HZ`) and a centre-bright B1+ map (see :data:`B1_CENTRE_SIGMA`),
      different per subject but the same on every run (seeded by the subject number).
    - ``"3T-highres-fat"``: 3 T values on BrainWeb's own 0.5 mm grid (362 × 434 × 362), with fat,
      fatty connective tissue and marrow at fat's chemical shift (:data:`FAT_SHIFT_PPM`, −434 Hz
      at 3 T). Loading it with :class:`~mr0core.TissueDict` needs about 2.3 GB of memory per
      tissue (10 tissues); pick a few slices of the NIfTI data first if that is too much.

    Tissues (one NIfTI volume each, density = BrainWeb membership × PD): ``csf``, ``gm``,
    ``wm``, ``fat``, ``muscle``, ``muscle_skin``, ``vessels``, ``around_fat``, ``dura``,
    ``marrow``; values and sources in :data:`TISSUE_VALUES`. The memberships are normalised to
    sum to one per voxel over all twelve BrainWeb classes; background and skull get no tissue.

    Files per subject: ``subjNN.nii.gz`` (1 mm densities, shared by ``"3T"`` and
    ``"7T-noise"``), ``subjNN-highres.nii.gz`` (0.5 mm densities), ``subjNN-7T-noise_dB0.nii.gz``
    and ``subjNN-7T-noise_B1+.nii.gz``. The grid is RAS+ (BrainWeb's x, y, z), centred so that
    voxel ``N // 2`` of each axis is at 0 mm. Every file is written under a temporary name and
    renamed when complete; a JSON file is written after its NIfTI files. Existing phantoms are
    overwritten. This is the layout of MR-zero's documentation (``subj05/subj05-3T.json``);
    MR-zero 1.2.0 itself writes ``brainweb-subj05/brainweb-subj05-3T.json``. Loading a 1 mm
    phantom into a :class:`~mr0core.TissueDict` takes about 3 GB of memory (10 tissues).

    Parameters
    ----------
    output_dir
        Folder of the phantoms and of the ``cache`` folder; created if missing.
    subject_count
        Build the first ``subject_count`` of the 20 subjects (default: all).
    config
        Keyword only (mr0core): one name of :data:`CONFIGS` or a list of them; default all
        three. MR-zero's documentation lists a ``config`` parameter; MR-zero 1.2.0 has none and
        writes all of its configurations.
    base_url
        Keyword only (mr0core): the download service or a mirror of it (``http``/``https``);
        default the environment variable ``MR0_BRAINWEB_URL``, else :data:`BRAINWEB_URL`. A
        volume is requested as ``<base_url>?do_download_alias=subjectNN_<class>&
        format_value=raw_byte&zip_value=gnuzip&download_for_real=...``.
    source_shape
        Keyword only (mr0core): the ``(z, y, x)`` shape of the served volumes (default
        :data:`SOURCE_SHAPE`, BrainWeb's). Only a mirror serving other volumes (a test server)
        needs it; every volume must have exactly ``z·y·x`` bytes.

    Returns
    -------
    list of Path
        The JSON files written, subject by subject in configuration order.

    Raises
    ------
    PhantomDownloadError
        A volume could not be downloaded (offline, unreachable, HTTP error, truncated transfer):
        a one-line message naming the URL, the cache and the built-in brain as the alternative.
        Volumes already downloaded stay in the cache.
    BrainWebDataError
        A downloaded volume is not a complete gzip stream of the expected size (the file is not
        kept), or a cached one is damaged (its name is given; delete it to download it again).
    ValueError
        An unknown configuration, a subject count outside 1…20, a bad URL or shape.
    TypeError
        ``subject_count`` is not an integer (e.g. a configuration name given in its place).
    """
    count = _subject_count(subject_count)
    configs = _configs(config)
    url = _base_url(base_url)
    shape = _shape(source_shape)
    out = Path(fspath(output_dir))
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for subject in tqdm(SUBJECTS[:count], desc="BrainWeb subjects", unit="subject"):
        files = {alias: _cached_volume(url, subject, alias, cache, shape) for alias, _ in _CLASSES}
        written += _build_subject(subject, files, shape, configs, out / f"subj{subject}")
    return written


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------


def _subject_count(value: Any) -> int:
    if value is None:
        return len(SUBJECTS)
    if isinstance(value, str):
        raise TypeError(
            f"subject_count must be an integer or None, got {value!r}; to choose a "
            f"configuration pass config={value!r}"
        )
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"subject_count must be an integer or None, got {value!r}")
    if not 1 <= int(value) <= len(SUBJECTS):
        raise ValueError(f"subject_count must be 1..{len(SUBJECTS)}, got {value}")
    return int(value)


def _configs(value: Any) -> tuple[str, ...]:
    try:
        names = CONFIGS if value is None else (value,) if isinstance(value, str) else tuple(value)
    except TypeError:
        raise TypeError(f"config must be a name or a list of names, got {value!r}") from None
    if not names:
        raise ValueError(f"config is empty; choose from {', '.join(CONFIGS)}")
    for name in names:
        if name not in _CONFIG:
            raise ValueError(f"unknown BrainWeb config {name!r}; choose from {', '.join(CONFIGS)}")
    return tuple(dict.fromkeys(names))


def _base_url(value: str | None) -> str:
    url = value if value is not None else os.environ.get(URL_ENV) or BRAINWEB_URL
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"BrainWeb base URL must be an http(s) URL, got {url!r}")
    return url


def _shape(value: SequenceABC[int]) -> tuple[int, int, int]:
    try:
        dims = tuple(int(v) for v in value)
        ok = len(dims) == 3 and all(d >= 1 and d == v for d, v in zip(dims, value, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"source_shape must be three positive integers (z, y, x), got {value!r}")
    return dims  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# download and cache
# ---------------------------------------------------------------------------------------------


def _volume_url(base: str, subject: str, alias: str) -> str:
    query = urllib.parse.urlencode(
        {
            "do_download_alias": f"subject{subject}_{alias}",
            "format_value": "raw_byte",
            "zip_value": "gnuzip",
            "download_for_real": "[Start download!]",
        }
    )
    return f"{base}{'&' if '?' in base else '?'}{query}"


def _cached_volume(
    base: str, subject: str, alias: str, cache: Path, shape: tuple[int, ...]
) -> Path:
    """Path of the cached volume ``subjectNN_<alias>``, downloaded first if it is not cached."""
    target = cache / f"subject{subject}_{alias}.rawb.gz"
    if not target.is_file():
        _download(_volume_url(base, subject, alias), target, math.prod(shape), cache)
    return target


def _download(url: str, target: Path, expected: int, cache: Path) -> None:
    """Download ``url`` beside ``target``, check it is a complete volume, then rename it."""
    tmp, out = _temp_beside(target)
    try:
        with out:
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    written = 0
                    with tqdm(
                        total=total, unit="B", unit_scale=True, desc=target.name, leave=False
                    ) as bar:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            written += len(chunk)
                            bar.update(len(chunk))
                    if total is not None and written != total:  # the connection broke off
                        raise http.client.IncompleteRead(b"", total - written)
            # HTTPError, timeouts, refused connections, truncated transfers
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                raise PhantomDownloadError(_offline_message(url, exc, cache)) from exc
        _check_volume(tmp, expected, f"download {url}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _offline_message(url: str, exc: BaseException, cache: Path) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        reason: Any = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, http.client.IncompleteRead):
        reason = f"transfer broke off, {exc.expected} bytes missing"
    else:
        reason = getattr(exc, "reason", None) or exc
    text = (
        f"could not download BrainWeb data {url} ({reason}); generate_brainweb_phantoms needs "
        f"BrainWeb's server once (downloads are kept in {cache}); offline, use the built-in "
        'brain instead: `mr0 phantom brain` or util.load_phantom(url="builtin:brain")'
    )
    return " ".join(text.split())  # one line, whatever the reason's text holds


def _check_volume(path: Path, expected: int, what: str) -> None:
    """Raise :class:`BrainWebDataError` unless ``path`` gunzips to exactly ``expected`` bytes."""
    size = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                size += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise BrainWebDataError(
            f"{what}: not a complete gzip stream ({exc}); the data were not kept"
        ) from exc
    if size != expected:
        raise BrainWebDataError(
            f"{what}: {size} bytes of voxels, expected {expected}; the data were not kept"
        )


def _read_volume(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """Return the cached volume ``[z, y, x]`` as uint8."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise BrainWebDataError(
            f"cached BrainWeb volume {path} is damaged ({exc}); delete it to download it again"
        ) from exc
    if len(data) != math.prod(shape):
        raise BrainWebDataError(
            f"cached BrainWeb volume {path} holds {len(data)} voxels, expected "
            f"{math.prod(shape)} for {shape}; delete it to download it again"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


# ---------------------------------------------------------------------------------------------
# phantom building
# ---------------------------------------------------------------------------------------------


def _build_subject(
    subject: str,
    files: dict[str, Path],
    shape: tuple[int, int, int],
    configs: tuple[str, ...],
    folder: Path,
) -> list[Path]:
    """Write the density files, field maps and JSON files of one subject."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"subj{subject}"
    low_shape = tuple((n + 1) // 2 for n in shape)
    grids: dict[bool, tuple[tuple[int, ...], float, str]] = {
        False: (low_shape, 2 * SOURCE_VOXEL_MM, f"{stem}.nii.gz"),
        True: (shape, SOURCE_VOXEL_MM, f"{stem}-highres.nii.gz"),
    }
    needed = {_CONFIG[c].highres for c in configs}

    # Memberships normalised over all classes: 1 / (sum of the twelve volumes), 0 where empty.
    total = np.zeros(shape, dtype=np.uint16)
    for alias, _ in _CLASSES:
        total += _read_volume(files[alias], shape)
    inverse = np.zeros(shape, dtype=np.float32)
    np.divide(1.0, total, out=inverse, where=total > 0)
    del total

    streams = {
        hr: _NiftiStream(folder / grids[hr][2], grids[hr][0], grids[hr][1], len(_TISSUES))
        for hr in sorted(needed)
    }
    try:
        for alias, name in _CLASSES:
            if name is None:
                continue
            fraction = _read_volume(files[alias], shape) * inverse
            pd = TISSUE_VALUES["3T"][name].PD  # PD does not depend on the field
            if False in streams:
                low = _downsample2(fraction)
                low *= pd
                streams[False].add(low)
            if True in streams:
                fraction *= pd
                streams[True].add(fraction)
        for stream in streams.values():
            stream.commit()
    finally:
        for stream in streams.values():
            stream.discard()
    del inverse

    written = []
    for name in configs:
        cfg = _CONFIG[name]
        grid_shape, voxel_mm, density_file = grids[cfg.highres]
        maps: tuple[NiftiRef, NiftiRef] | None = None
        if cfg.fields:
            maps = _write_field_maps(folder, f"{stem}-{name}", subject, grid_shape, voxel_mm)
        phantom = _phantom_config(cfg, density_file, maps)
        path = folder / f"{stem}-{name}.json"
        _atomic_json(phantom, path)
        written.append(path)
    return written


def _phantom_config(
    cfg: _Config, density_file: str, maps: tuple[NiftiRef, NiftiRef] | None
) -> NiftiPhantom:
    """Return the JSON configuration of a phantom (tissues in the density file's volume order)."""
    system = PhantomSystem(B0=cfg.B0)
    fat_hz = FAT_SHIFT_PPM * system.gyro * cfg.B0  # ppm × MHz/T × T = Hz
    tissues: dict[str, NiftiTissue] = {}
    for index, name in enumerate(_TISSUES):
        v = TISSUE_VALUES[cfg.field][name]
        tissue = NiftiTissue(NiftiRef(density_file, index), v.T1, v.T2, v.T2dash, v.ADC)
        if cfg.fat_shift and name in _FAT_TISSUES:
            tissue.dB0 = round(fat_hz, 3)
        if maps is not None:
            tissue.dB0, tissue.B1_tx = maps[0], [maps[1]]
        tissues[name] = tissue
    return NiftiPhantom(PhantomUnits.default(), system, tissues)


def _write_field_maps(
    folder: Path, stem: str, subject: str, shape: tuple[int, ...], voxel_mm: float
) -> tuple[NiftiRef, NiftiRef]:
    """Write the smooth B0 (Hz) and B1+ (relative) maps of "7T-noise"; return their refs."""
    rng = np.random.default_rng([7, int(subject)])
    b0 = _smooth_field(shape, rng)
    b0 *= B0_STD_7T_HZ
    z, y, x = (np.linspace(-1.0, 1.0, n, dtype=np.float32) if n > 1 else np.zeros(1, np.float32)
               for n in shape)  # fmt: skip
    r2 = z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2
    b1 = 0.7 + 0.6 * np.exp(-r2 / (2 * B1_CENTRE_SIGMA**2)) + _B1_RANDOM * _smooth_field(shape, rng)
    refs = []
    for key, volume in (("dB0", b0), ("B1+", b1.astype(np.float32))):
        name = f"{stem}_{key}.nii.gz"
        with _NiftiStream(folder / name, shape, voxel_mm, 1) as stream:
            stream.add(volume)
            stream.commit()
        refs.append(NiftiRef(name, 0))
    return refs[0], refs[1]


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Return a smooth random field ``[z, y, x]``, zero mean, unit standard deviation.

    A sum of the lowest cosine modes of each axis, with weights falling off as
    1 / (1 + a² + b² + c²) for the mode numbers a, b, c (the constant mode left out).
    """
    k = _FIELD_MODES
    weights = rng.standard_normal((k, k, k))
    modes = np.arange(k)
    weights /= (
        1.0 + modes[:, None, None] ** 2 + modes[None, :, None] ** 2 + modes[None, None, :] ** 2
    )
    weights[0, 0, 0] = 0.0
    bases = [np.cos(np.pi * np.outer((np.arange(n) + 0.5) / n, modes)) for n in shape]
    field = np.einsum("ia,jb,kc,abc->ijk", *bases, weights, optimize=True).astype(np.float32)
    field -= field.mean()
    std = float(field.std())
    if std > 0:
        field /= std
    result: np.ndarray = field
    return result


def _downsample2(volume: np.ndarray) -> np.ndarray:
    """Mean over 2 × 2 × 2 blocks (an odd axis is padded with one empty layer)."""
    pads = [(0, n % 2) for n in volume.shape]
    if any(p for _, p in pads):
        volume = np.pad(volume, pads)
    z, y, x = (n // 2 for n in volume.shape)
    result: np.ndarray = volume.reshape(z, 2, y, 2, x, 2).mean(axis=(1, 3, 5), dtype=np.float32)
    return result


def _affine(shape_zyx: SequenceABC[int], voxel_mm: float) -> np.ndarray:
    """RAS+ mm affine of a grid ``[x, y, z]`` with voxel ``N // 2`` of each axis at 0 mm."""
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    for axis, n in enumerate(reversed(tuple(shape_zyx))):
        affine[axis, 3] = -(int(n) // 2) * voxel_mm
    return affine


def _temp_beside(target: Path) -> tuple[Path, BinaryIO]:
    """Create a new hidden ``.part`` file beside ``target`` (permissions as the umask gives)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
        try:
            return tmp, open(tmp, "xb")  # the caller closes it
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {target}")


def _atomic_json(phantom: NiftiPhantom, path: Path) -> None:
    tmp, out = _temp_beside(path)
    out.close()
    try:
        phantom.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _NiftiStream:
    """A 4-D float32 ``.nii.gz`` written one volume at a time under a temporary name.

    Volumes are ``[z, y, x]`` arrays (C order), which is the NIfTI data order of an ``[x, y, z]``
    image, so each is written as it is. :meth:`commit` renames the finished file into place;
    :meth:`discard` (or leaving the ``with`` block without a commit) removes it.
    """

    def __init__(self, path: Path, shape_zyx: Iterable[int], voxel_mm: float, count: int) -> None:
        self.path = path
        self.shape = tuple(int(n) for n in shape_zyx)
        self.count = count
        self.added = 0
        header = nib.Nifti1Header(endianness="<")
        header.set_data_dtype(np.float32)
        header.set_data_shape((*reversed(self.shape), count))
        header.set_zooms((voxel_mm, voxel_mm, voxel_mm, 1.0))
        header.set_sform(_affine(self.shape, voxel_mm), code=2)
        header.set_qform(None, code=0)
        header.set_xyzt_units("mm", "sec")
        header["vox_offset"] = 352
        buf = io.BytesIO()
        header.write_to(buf)
        head = buf.getvalue()
        head += b"\x00" * (352 - len(head))  # the (empty) extension flag
        tmp, self.raw = _temp_beside(path)
        self.tmp: Path | None = tmp
        self.gz = gzip.GzipFile(
            filename="", fileobj=self.raw, mode="wb", compresslevel=_GZIP_LEVEL, mtime=0
        )
        self.gz.write(head)

    def add(self, volume: np.ndarray) -> None:
        if volume.shape != self.shape:
            raise ValueError(f"{self.path.name}: volume {volume.shape}, expected {self.shape}")
        if self.added >= self.count:
            raise ValueError(f"{self.path.name}: more than {self.count} volumes")
        self.gz.write(np.ascontiguousarray(volume, dtype="<f4").tobytes())
        self.added += 1

    def commit(self) -> None:
        if self.added != self.count:
            raise ValueError(f"{self.path.name}: {self.added} of {self.count} volumes written")
        self.gz.close()
        self.raw.close()
        assert self.tmp is not None
        os.replace(self.tmp, self.path)
        self.tmp = None

    def discard(self) -> None:
        if self.tmp is not None:
            self.gz.close()
            self.raw.close()
            self.tmp.unlink(missing_ok=True)
            self.tmp = None

    def __enter__(self) -> _NiftiStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()

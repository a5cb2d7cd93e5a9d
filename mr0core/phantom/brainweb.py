"""MR-zero's BrainWeb phantom generator, ``generate_brainweb_phantoms``: not available here."""

from __future__ import annotations

from os import PathLike

__all__ = ["generate_brainweb_phantoms"]


def generate_brainweb_phantoms(
    output_dir: str | PathLike[str], subject_count: int | None = None
) -> None:
    """MR-zero's download-and-build of BrainWeb NIfTI phantoms; not implemented in mr0core.

    Parameters
    ----------
    output_dir
        Where MR-zero writes the phantoms (and its download cache).
    subject_count
        How many BrainWeb subjects MR-zero generates (default: all).

    Raises
    ------
    NotImplementedError
        Always: it needs BrainWeb's download service and MR-zero's tissue tables, which mr0core
        does not have. Use the built-in brain (``mr0 phantom brain`` writes it as a NIfTI
        phantom) or :meth:`mr0core.TissueDict.from_maps` with your own maps.
    """
    raise NotImplementedError(
        f"generate_brainweb_phantoms({str(output_dir)!r}): needs BrainWeb's download service and "
        "MR-zero's tissue tables; use the built-in brain (`mr0 phantom brain`) instead"
    )

"""Hostile ISMRMRD headers: matrices the recon would allocate are bounded before it allocates.

The attack of issue 21: a 3 kB header claiming a 512 x 512 x 128 encoded matrix and one
1-sample acquisition made the recon allocate 1.3 GB (20 GB for 16 sessions).
"""

from __future__ import annotations

import tracemalloc

import ismrmrd
import ismrmrd.xsd as xsd
import numpy as np
import pytest

from mr0core.io.mrd import (
    DEFAULT_MATRIX_LIMITS,
    GRID_BYTES_PER_CELL,
    GRID_BYTES_PER_CELL_COIL,
    MatrixLimits,
    MrdFormatError,
    MrdHeaderError,
    check_matrix,
    kdata_from_acquisitions,
    parse_header,
    read_mrd,
)
from mr0core.recon.auto import reconstruct


def header(
    encoded: tuple[int, int, int],
    recon: tuple[int, int, int] | None = None,
    trajectory: str = "cartesian",
    channels: int | None = None,
) -> str:
    """ISMRMRD XML with the given encoded and recon matrices (FOV 256 x 256 x 5 mm)."""

    def space(matrix: tuple[int, int, int]) -> xsd.encodingSpaceType:
        return xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=matrix[0], y=matrix[1], z=matrix[2]),
            fieldOfView_mm=xsd.fieldOfViewMm(x=256.0, y=256.0, z=5.0),
        )

    enc = xsd.encodingType(
        encodedSpace=space(encoded),
        reconSpace=space(recon or encoded),
        encodingLimits=xsd.encodingLimitsType(
            kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=0, center=0)
        ),
        trajectory=xsd.trajectoryType(trajectory),
    )
    system = None
    if channels is not None:
        system = xsd.acquisitionSystemInformationType(receiverChannels=channels)
    return xsd.ToXML(
        xsd.ismrmrdHeader(
            experimentalConditions=xsd.experimentalConditionsType(
                H1resonanceFrequency_Hz=127_728_000
            ),
            encoding=[enc],
            acquisitionSystemInformation=system,
        )
    )


def acquisition(samples: int = 1, coils: int = 1, slice_: int = 0) -> ismrmrd.Acquisition:
    acq = ismrmrd.Acquisition.from_array(np.ones((coils, samples), dtype=np.complex64))
    acq.center_sample = samples // 2
    acq.sample_time_us = 10.0
    acq.idx.slice = slice_
    return acq


def grid_bytes(voxels: int, coils: int = 1, groups: int = 1) -> int:
    return groups * voxels * (coils * GRID_BYTES_PER_CELL_COIL + GRID_BYTES_PER_CELL)


def test_the_attack_header_is_refused_before_the_recon_allocates() -> None:
    xml = header((512, 512, 128))
    assert len(xml) < 3000

    def attack() -> None:
        reconstruct(kdata_from_acquisitions(xml, [acquisition()], "attack"))

    tracemalloc.start()
    with pytest.raises(MrdHeaderError) as info:
        attack()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    err = info.value
    assert err.limit == "max_grid_bytes"
    assert err.bound == DEFAULT_MATRIX_LIMITS.max_grid_bytes
    assert "encodedSpace" in err.field
    assert "(512, 512, 128)" in str(err)
    assert str(err).startswith("attack: ")
    assert peak < 50 << 20  # the recon's grid alone would be 1.3 GB


def test_a_header_just_under_the_grid_bound_reconstructs() -> None:
    xml = header((32, 32, 4))
    need = grid_bytes(32 * 32 * 4, coils=2)
    kd = kdata_from_acquisitions(
        xml, [acquisition(coils=2)], limits=MatrixLimits(max_grid_bytes=need)
    )
    assert reconstruct(kd).image.shape[-3:] == (32, 32, 4)
    with pytest.raises(MrdHeaderError, match=f"max_grid_bytes={need - 1}"):
        kdata_from_acquisitions(
            xml, [acquisition(coils=2)], limits=MatrixLimits(max_grid_bytes=need - 1)
        )


def test_each_group_of_the_data_is_a_grid() -> None:
    xml = header((32, 32, 1))
    acqs = [acquisition(slice_=0), acquisition(slice_=1), acquisition(slice_=1)]
    need = grid_bytes(32 * 32, groups=2)
    kdata_from_acquisitions(xml, acqs, limits=MatrixLimits(max_grid_bytes=need))
    with pytest.raises(MrdHeaderError, match="2 groups"):
        kdata_from_acquisitions(xml, acqs, limits=MatrixLimits(max_grid_bytes=need - 1))


@pytest.mark.parametrize("space", ["encodedSpace", "reconSpace"])
def test_each_dimension_is_bounded(space: str) -> None:
    big, small = (5000, 4, 1), (8, 4, 1)
    xml = header(big, small) if space == "encodedSpace" else header(small, big)
    with pytest.raises(MrdHeaderError) as info:
        kdata_from_acquisitions(xml, [acquisition()])
    assert info.value.limit == "max_dim"
    assert info.value.field == f"encoding[0].{space}.matrixSize"
    assert info.value.value == big
    kdata_from_acquisitions(xml, [acquisition()], limits=MatrixLimits(max_dim=5000))


def test_voxels_are_bounded() -> None:
    xml = header((16, 16, 4))
    kdata_from_acquisitions(xml, [acquisition()], limits=MatrixLimits(max_voxels=1024))
    with pytest.raises(MrdHeaderError, match="max_voxels=1023"):
        kdata_from_acquisitions(xml, [acquisition()], limits=MatrixLimits(max_voxels=1023))


def test_non_cartesian_counts_the_oversampled_recon_grid() -> None:
    xml = header((64, 64, 1), trajectory="radial")
    need = grid_bytes(4 * 64 * 64)
    assert check_matrix(parse_header(xml), limits=MatrixLimits(max_grid_bytes=need)) == need
    with pytest.raises(MrdHeaderError):
        check_matrix(parse_header(xml), limits=MatrixLimits(max_grid_bytes=need - 1))


def test_check_at_header_arrival_takes_the_headers_channels() -> None:
    xml = header((64, 64, 1), channels=32)
    assert check_matrix(parse_header(xml)) == grid_bytes(64 * 64, coils=32)
    assert check_matrix(parse_header(header((64, 64, 1)))) == grid_bytes(64 * 64)
    with pytest.raises(MrdHeaderError, match="32 coils"):
        check_matrix(parse_header(header((512, 512, 16), channels=32)))


def test_non_positive_matrix_is_a_format_error() -> None:
    with pytest.raises(MrdFormatError, match="must be positive"):
        check_matrix(parse_header(header((0, 64, 1))))


def test_read_mrd_applies_the_limits(tmp_path) -> None:
    path = tmp_path / "raw.h5"
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    ds.write_xml_header(header((64, 64, 8)))
    ds.append_acquisition(acquisition())
    ds.close()
    assert read_mrd(path).encoded_matrix == (64, 64, 8)
    with pytest.raises(MrdHeaderError, match="max_voxels"):
        read_mrd(path, limits=MatrixLimits(max_voxels=64 * 64 * 8 - 1))


def test_limits_validate_their_values() -> None:
    with pytest.raises(ValueError, match="max_dim"):
        MatrixLimits(max_dim=0)
    with pytest.raises(TypeError, match="max_voxels"):
        MatrixLimits(max_voxels=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="MatrixLimits"):
        check_matrix(parse_header(header((8, 8, 1))), limits={"max_dim": 8})  # type: ignore[arg-type]

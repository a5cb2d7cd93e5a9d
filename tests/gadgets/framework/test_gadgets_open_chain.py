"""The one session opener (``gadgets.framework.chain.open_chain``) and the one MRD file reader."""

from __future__ import annotations

import logging
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

import gadgets.library  # noqa: F401  (registers the gadgets the chains name)
from gadgets.framework.chain import (
    ChainError,
    Services,
    chain_text,
    open_chain,
    parse_chain,
    parse_session_header,
)
from gadgets.framework.core import GadgetError, Text
from gadgets.wire.mrdfile import SessionWriter, read_items

HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <subjectInformation><patientID>{patient}</patientID></subjectInformation>
  <experimentalConditions><H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz>
  </experimentalConditions>
  <encoding>
    <encodedSpace><matrixSize><x>8</x><y>8</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>8</x><y>8</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></reconSpace>
    <encodingLimits/>
    <trajectory>cartesian</trajectory>
  </encoding>
</ismrmrdHeader>
"""


def header_xml(patient: str = "P1") -> str:
    return HEADER.format(patient=patient)


@pytest.mark.parametrize("form", ["name", "xml", "spec"])
def test_a_chain_opens_from_its_name_its_xml_or_its_parsed_spec(form: str, tmp_path: Path):
    config = {"name": "passthrough", "xml": chain_text("passthrough"),
              "spec": parse_chain(chain_text("passthrough"))}[form]  # fmt: skip
    services = Services(save_dir=tmp_path / "save", phantoms_dir=tmp_path / "ph",
                        store=object(), scheduler=object())  # fmt: skip
    chain = open_chain(config, header_xml(), {}, services, session_id="s1")
    ctx = chain.context
    assert ctx.header is not None
    assert ctx.header.subjectInformation.patientID == "P1"
    assert ctx.header_xml == header_xml()
    assert ctx.session_id == "s1"
    assert ctx.logger.name == "mr0.gadgets.s1"
    assert (ctx.save_dir, ctx.phantoms_dir) == (services.save_dir, services.phantoms_dir)
    assert ctx.store is services.store
    assert ctx.scheduler is services.scheduler
    assert [out.text for out in chain.run([Text("hi")])] == ["hi"]


def test_parameters_are_the_overrides_and_the_context_parameters():
    chain = open_chain("default", "", {"series_index": 3}, Services(), session_id="s")
    assert chain.context.header is None  # no header sent
    assert chain.context.parameters == {"series_index": 3}
    with pytest.raises(ChainError, match="no gadget of the chain has that property"):
        open_chain("default", "", {"nonsense": 1}, Services(), session_id="s")


def test_a_given_parsed_header_and_logger_are_used_as_they_are():
    parsed = parse_session_header(header_xml("P2"))
    log = logging.getLogger("mine")
    chain = open_chain("passthrough", "<not parsed/>", None, Services(), session_id="s",
                       header=parsed, logger=log)  # fmt: skip
    assert chain.context.header is parsed
    assert chain.context.logger is log
    assert chain.context.parameters == {}


def test_a_header_that_does_not_parse_is_a_gadget_error():
    with pytest.raises(GadgetError, match="the ISMRMRD header does not parse"):
        open_chain("passthrough", "<ismrmrdHeader><oops", None, Services(), session_id="s")
    assert parse_session_header("  \n") is None


def test_an_unknown_chain_name_is_a_chain_error(tmp_path: Path):
    with pytest.raises(ChainError, match="no chain 'nowhere'"):
        open_chain("nowhere", "", None, Services(chains_dir=tmp_path), session_id="s")


def test_read_items_reads_what_the_session_writer_wrote_and_only_the_kinds_asked(tmp_path: Path):
    path = tmp_path / "s.h5"
    acq = ismrmrd.Acquisition.from_array(np.ones((2, 8), np.complex64))
    image = ismrmrd.Image.from_array(np.ones((4, 4), np.float32))
    image.image_series_index = 2
    with SessionWriter(path) as writer:
        writer.write_header(header_xml())
        writer.add(acq)
        writer.add(image)
    xml, items = read_items(path)
    assert xml == header_xml()
    assert [type(i) for i in items] == [ismrmrd.Acquisition, ismrmrd.Image]
    _, acqs = read_items(path, kinds=("acquisitions",))
    assert [type(i) for i in acqs] == [ismrmrd.Acquisition]
    np.testing.assert_array_equal(acqs[0].data, acq.data)
    assert read_items(path, group="other") == ("", [])
    with pytest.raises(ValueError, match="unknown MRD item kinds"):
        read_items(path, kinds=("acquisition",))

"""Chains: XML parsing, registry-only class resolution, safe chain names, typed properties,
JSON overrides, and how a chain composes its gadgets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import ismrmrd
import numpy as np
import pytest

import gadgets.library  # noqa: F401  (registers the gadgets the chains name)
from gadgets.framework.chain import (
    DEFAULT_CHAINS_DIR,
    MAX_CHAIN_BYTES,
    Chain,
    ChainError,
    chain_path,
    load_chain,
    parse_chain,
)
from gadgets.framework.core import REGISTRY, Context, Gadget, GadgetError, Property, Text, register

SHIPPED = ("default", "passthrough", "savedata", "nufft", "sense")


def xml_of(*gadgets: tuple[str, str, dict[str, str]]) -> str:
    body = ""
    for name, classname, props in gadgets:
        p = "".join(f'<property name="{k}" value="{v}"/>' for k, v in props.items())
        body += f"<gadget><name>{name}</name><classname>{classname}</classname>{p}</gadget>"
    return f"<configuration><version>2</version><stream>{body}</stream></configuration>"


# test gadgets (registered once, under names no real gadget uses)


@register
class _TagGadget(Gadget):
    """Appends its tag to Text items; counts what it saw."""

    properties = {  # noqa: RUF012
        "tag": Property("str", "x", "text to append"),
        "times": Property("int", 1, "how often", min=0, max=5),
        "gain": Property("float", 1.0, "a factor", min=0.0),
        "loud": Property("bool", False, "a switch"),
        "mode": Property("choice", "a", "a choice", choices=("a", "b")),
    }

    def process_item(self, item):
        if isinstance(item, Text):
            return (Text(item.text + self.props["tag"] * self.props["times"]),)
        return (item,)


@register
class _FailGadget(Gadget):
    properties = {}  # noqa: RUF012

    def process_item(self, item):
        raise KeyError("boom")


# -- parsing -------------------------------------------------------------------------------------


def test_default_chain_parses_in_order():
    spec = parse_chain((DEFAULT_CHAINS_DIR / "default.xml").read_text())
    assert [g.classname for g in spec.gadgets] == [
        "NoiseAdjustGadget",
        "AccumulateTriggerGadget",
        "RemoveROOversamplingGadget",
        "FFTGadget",
        "CombineGadget",
        "ExtractGadget",
        "ImageFinishGadget",
    ]
    combine = spec.gadgets[4]
    assert combine.name == "Combine"
    assert combine.properties == {"method": "rss"}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_chains_build(name):
    chain = load_chain(name, DEFAULT_CHAINS_DIR, Context())
    assert chain.gadgets
    assert all(
        type(g) is REGISTRY[s.classname]
        for g, s in zip(chain.gadgets, chain.spec.gadgets, strict=True)
    )


def test_gadgetron_v1_format_is_read():
    xml = """<?xml version="1.0"?>
    <gadgetronStreamConfiguration xmlns="http://gadgetron.sf.net/gadgetron">
      <reader><slot>1008</slot><dll>gadgetron_mricore</dll><classname>X</classname></reader>
      <gadget><name>T</name><dll>d</dll><classname>_TagGadget</classname>
        <property><name>tag</name><value>y</value></property>
      </gadget>
    </gadgetronStreamConfiguration>"""
    spec = parse_chain(xml)
    assert [(g.name, g.classname, g.properties) for g in spec.gadgets] == [
        ("T", "_TagGadget", {"tag": "y"})
    ]


def test_name_defaults_to_classname():
    spec = parse_chain(
        "<configuration><stream><gadget><classname>_TagGadget</classname></gadget>"
        "</stream></configuration>"
    )
    assert spec.gadgets[0].name == "_TagGadget"


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ('<!DOCTYPE x [<!ENTITY a "b">]><configuration/>', "DOCTYPE or ENTITY"),
        ('<configuration><!ENTITY a "b"></configuration>', "DOCTYPE or ENTITY"),
        ("<configuration><stream>", "not well-formed"),
        ("<other/>", "root must be"),
        ("<configuration><version>3</version><stream/></configuration>", "version must be 2"),
        ("<configuration><version>2</version></configuration>", "exactly one <stream>"),
        ("<configuration><stream/></configuration>", "no gadgets"),
        (
            "<configuration><stream><gadget><name>a</name></gadget></stream></configuration>",
            "no <classname>",
        ),
        (
            "<configuration><stream><external><execute name='m' target='t' type='python'/>"
            "</external></stream></configuration>",
            "not supported",
        ),
        (
            "<configuration><stream><gadget><name>../x</name><classname>_TagGadget</classname>"
            "</gadget></stream></configuration>",
            "not a plain name",
        ),
    ],
)
def test_bad_xml_is_a_chain_error(xml, message):
    with pytest.raises(ChainError, match=message):
        parse_chain(xml)


def test_duplicate_gadget_names_and_properties_are_refused():
    with pytest.raises(ChainError, match="more than once"):
        parse_chain(xml_of(("a", "_TagGadget", {}), ("a", "_TagGadget", {})))
    twice = (
        "<configuration><stream><gadget><classname>_TagGadget</classname>"
        '<property name="tag" value="1"/><property name="tag" value="2"/>'
        "</gadget></stream></configuration>"
    )
    with pytest.raises(ChainError, match="set twice"):
        parse_chain(twice)


def test_oversized_xml_is_refused():
    big = xml_of(("a", "_TagGadget", {})) + " " * MAX_CHAIN_BYTES
    with pytest.raises(ChainError, match="more than the limit"):
        parse_chain(big)


# -- class resolution ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "classname",
    ["os.system", "gadgets.library.recon.FFTGadget", "__import__", "Gadget", "subprocess"],
)
def test_classes_resolve_only_through_the_registry(classname):
    assert classname not in REGISTRY
    with pytest.raises(ChainError, match="unknown class"):
        Chain(parse_chain(xml_of(("g", classname, {}))), Context())


def test_aliases_and_registry_guards():
    assert REGISTRY["AcquisitionAccumulateTriggerGadget"] is REGISTRY["AccumulateTriggerGadget"]
    with pytest.raises(TypeError):
        register(dict)  # type: ignore[arg-type]

    class _TagGadget(Gadget):  # same name, another class
        pass

    with pytest.raises(ValueError, match="already registered"):
        register(_TagGadget)


# -- chain names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "os", "", "/etc/passwd", "a/b", "..", ".hidden", "default\x00", "x" * 200],
)
def test_chain_path_rejects_unsafe_or_unknown_names(name):
    with pytest.raises(ChainError):
        chain_path(name, DEFAULT_CHAINS_DIR)


def test_chain_path_accepts_names_with_or_without_suffix():
    expected = (DEFAULT_CHAINS_DIR / "default.xml").resolve()
    assert chain_path("default", DEFAULT_CHAINS_DIR) == expected
    assert chain_path("default.xml", DEFAULT_CHAINS_DIR) == expected


def test_chain_path_rejects_a_link_out_of_the_folder(tmp_path):
    chains = tmp_path / "chains"
    chains.mkdir()
    outside = tmp_path / "secret.xml"
    outside.write_text(xml_of(("a", "_TagGadget", {})))
    os.symlink(outside, chains / "evil.xml")
    (chains / "ok.xml").write_text(xml_of(("a", "_TagGadget", {})))
    assert chain_path("ok", chains) == (chains / "ok.xml").resolve()
    with pytest.raises(ChainError, match="outside"):
        chain_path("evil", chains)


# -- properties ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prop", "raw", "value"),
    [
        ("times", "3", 3),
        ("times", " 2 ", 2),
        ("times", 4, 4),
        ("times", 4.0, 4),
        ("gain", "1e-3", 1e-3),
        ("gain", 2, 2.0),
        ("loud", "TRUE", True),
        ("loud", "off", False),
        ("loud", "1", True),
        ("loud", True, True),
        ("mode", "b", "b"),
        ("tag", "  spaced  ", "spaced"),
    ],
)
def test_property_values_are_parsed(prop, raw, value):
    g = _TagGadget(Context(), "t", **{prop: raw})
    assert g.props[prop] == value
    assert type(g.props[prop]) is type(value)


@pytest.mark.parametrize(
    ("prop", "raw"),
    [
        ("times", "3.5"),
        ("times", "abc"),
        ("times", "6"),
        ("times", "-1"),
        ("times", True),
        ("gain", "nan"),
        ("gain", "inf"),
        ("gain", "-1"),
        ("loud", "maybe"),
        ("loud", 2),
        ("mode", "c"),
        ("tag", "x" * 5000),
        ("tag", 3),
    ],
)
def test_bad_property_values_name_gadget_property_and_value(prop, raw):
    with pytest.raises(ChainError) as info:
        _TagGadget(Context(), "MyTag", **{prop: raw})
    message = str(info.value)
    assert "MyTag" in message
    assert prop in message
    assert repr(raw)[:20] in message


def test_unknown_property_is_a_chain_error():
    with pytest.raises(ChainError, match="no property 'colour'"):
        Chain(parse_chain(xml_of(("t", "_TagGadget", {"colour": "red"}))), Context())


def test_defaults_and_property_definitions_are_checked():
    assert _TagGadget(Context()).props == {
        "tag": "x",
        "times": 1,
        "gain": 1.0,
        "loud": False,
        "mode": "a",
    }
    with pytest.raises(ValueError, match="property type"):
        Property("list", [])
    with pytest.raises(ValueError, match="choices"):
        Property("choice", "a")
    with pytest.raises(ValueError, match="maximum"):
        Property("int", 10, max=5)


# -- overrides -----------------------------------------------------------------------------------


def two_tags() -> str:
    return xml_of(("A", "_TagGadget", {"tag": "a"}), ("B", "_TagGadget", {"tag": "b"}))


def test_plain_override_sets_every_gadget_with_the_property():
    chain = Chain(parse_chain(two_tags()), Context(), {"times": 2})
    assert [g.props["times"] for g in chain.gadgets] == [2, 2]
    assert [g.props["tag"] for g in chain.gadgets] == ["a", "b"]


def test_dotted_override_sets_one_gadget_and_wins():
    chain = Chain(parse_chain(two_tags()), Context(), {"B.tag": "z", "tag": "q", "A.times": "0"})
    assert [g.props["tag"] for g in chain.gadgets] == ["q", "z"]
    assert [g.props["times"] for g in chain.gadgets] == [0, 1]
    (out,) = chain.run([Text(">")])
    assert out.text == ">z"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nothing": 1}, "no gadget of the chain has that property"),
        ({"C.tag": "x"}, "no gadget 'C'"),
        ({"A.colour": "x"}, "has no property 'colour'"),
        ({"tag": {"nested": 1}}, "expected a string or a number, got a dict"),
        ({"times": [1]}, "expected a string, number, boolean or object"),
        ({"times": 99}, "above the maximum"),
    ],
)
def test_bad_overrides_are_chain_errors(overrides, message):
    with pytest.raises(ChainError, match=message):
        Chain(parse_chain(two_tags()), Context(), overrides)


def test_default_chain_overrides_reach_the_gadgets():
    chain = load_chain(
        "default",
        DEFAULT_CHAINS_DIR,
        Context(),
        {"prewhitening": False, "Combine.method": "adaptive"},
    )
    by_name = {g.name: g for g in chain.gadgets}
    assert by_name["NoiseAdjust"].props["prewhitening"] is False
    assert by_name["FFT"].props["prewhitening"] is False
    assert by_name["Combine"].props["method"] == "adaptive"


# -- running -------------------------------------------------------------------------------------


def test_gadgets_compose_in_order_and_pass_unknown_items():
    chain = Chain(parse_chain(two_tags()), Context())
    marker = object()
    out = list(chain.run([Text("0"), marker, Text("1")]))
    assert [o.text if isinstance(o, Text) else o for o in out] == ["0ab", marker, "1ab"]


def test_passthrough_chain_returns_items_unchanged():
    acq = ismrmrd.Acquisition.from_array(np.arange(8, dtype=np.complex64).reshape(2, 4))
    wf = ismrmrd.Waveform.from_array(np.ones((1, 4), dtype=np.uint32))
    items = [acq, wf, Text("hi")]
    out = list(load_chain("passthrough", DEFAULT_CHAINS_DIR, Context()).run(items))
    assert all(a is b for a, b in zip(out, items, strict=True))
    assert len(out) == 3


def test_a_failing_gadget_raises_a_gadget_error_naming_it():
    chain = Chain(
        parse_chain(xml_of(("Up", "_TagGadget", {}), ("Bad", "_FailGadget", {}))), Context()
    )
    with pytest.raises(GadgetError, match=r"Bad: KeyError: 'boom'"):
        list(chain.run([Text("x")]))


def test_chains_are_lazy():
    consumed = []

    def feed():
        for i in range(3):
            consumed.append(i)
            yield Text(str(i))

    it = load_chain("passthrough", DEFAULT_CHAINS_DIR, Context()).run(feed())
    assert next(it).text == "0"
    assert consumed == [0]


def test_load_chain_from_another_folder(tmp_path: Path):
    (tmp_path / "mine.xml").write_text(xml_of(("T", "_TagGadget", {"tag": "!"})))
    (out,) = load_chain("mine", tmp_path, Context()).run([Text("hi")])
    assert out.text == "hi!"
    # the built-in chains stay available beside a site's folder; a name in neither is an error
    assert "Combine" in repr(load_chain("default", tmp_path, Context()))
    with pytest.raises(ChainError, match="no chain 'nowhere'"):
        load_chain("nowhere", tmp_path, Context())


def test_str_property_length_bound_and_short_error():
    default = Property("str", "")
    assert default.parse("x" * 4096) == "x" * 4096
    with pytest.raises(ValueError, match="longer than 4096"):
        default.parse("x" * 4097)
    big = Property("str", "", max=10_000)
    assert len(big.parse("y" * 10_000)) == 10_000

    class Long(Gadget):
        properties: ClassVar[dict[str, Property]] = {"text": Property("str", "", max=8)}

    with pytest.raises(ChainError) as info:
        Long(Context(), text="z" * 5000)
    assert "longer than 8" in str(info.value)
    assert len(str(info.value)) < 200  # the value is shown cut, not whole

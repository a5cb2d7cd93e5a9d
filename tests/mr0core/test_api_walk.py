"""Walk MR-zero's documented API (``tests/mrzero_api.py``) through mr0core, and MRzeroCore.

For every documented name: mr0core has it at the same path, of the same kind, with the same
parameters (names, order, kinds, defaults; extra parameters of ours only after all documented
ones and only with a default, keyword-only or ``*args``/``**kwargs``), and the documented return
type. The ``reference`` tests check that the list follows the installed MRzeroCore 1.2.0 and that
mr0core's signatures match MRzeroCore's.
"""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch
from mrzero_api import API, Entry

import mr0core

EMPTY = inspect.Parameter.empty
Param = tuple[str, inspect._ParameterKind, Any]


# ------------------------------------------------------------------ parsing the documented list


def _literal(node: ast.expr) -> Any:
    """Evaluate a default of the list: a literal, ``inf`` or ``tensor(<literal>)``."""
    if isinstance(node, ast.Name) and node.id == "inf":
        return math.inf
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "tensor":
        return torch.tensor(ast.literal_eval(node.args[0]))
    if isinstance(node, ast.Tuple | ast.List):
        items = [_literal(e) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    return ast.literal_eval(node)


def parse_sig(sig: str) -> list[Param]:
    """``"(a, b=1, *c, d=2, **e)"`` → ``[(name, kind, default), ...]``."""
    args = ast.parse(f"def f{sig}: pass").body[0].args  # type: ignore[attr-defined]
    kinds = inspect.Parameter
    out: list[Param] = []
    positional = [*args.posonlyargs, *args.args]
    defaults = [EMPTY] * (len(positional) - len(args.defaults)) + [
        _literal(d) for d in args.defaults
    ]
    for i, (a, d) in enumerate(zip(positional, defaults, strict=True)):
        kind = kinds.POSITIONAL_ONLY if i < len(args.posonlyargs) else kinds.POSITIONAL_OR_KEYWORD
        out.append((a.arg, kind, d))
    if args.vararg:
        out.append((args.vararg.arg, kinds.VAR_POSITIONAL, EMPTY))
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        out.append((a.arg, kinds.KEYWORD_ONLY, EMPTY if d is None else _literal(d)))
    if args.kwarg:
        out.append((args.kwarg.arg, kinds.VAR_KEYWORD, EMPTY))
    return out


def params_of(obj: Any, kind: str) -> list[Param]:
    """Parameters of a callable as the list writes them (no self/cls)."""
    sig = inspect.signature(obj)
    params = list(sig.parameters.values())
    if kind == "method" and params and params[0].name == "self":
        params = params[1:]
    return [(p.name, p.kind, p.default) for p in params]


def same_default(a: Any, b: Any) -> bool:
    """Equal defaults: lists and tuples alike, tensors by value, ints equal to floats."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and bool(torch.equal(a.double(), b.double()))
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_default(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b or (a is EMPTY and b is EMPTY)


def mismatches(ours: list[Param], spec: list[Param], entry: Entry) -> list[str]:
    """What keeps ``ours`` from accepting every call ``spec`` accepts, with the same defaults."""
    kinds = inspect.Parameter
    spec_kw = [p for p in spec if p[1] == kinds.VAR_KEYWORD]
    spec_main = [p for p in spec if p[1] != kinds.VAR_KEYWORD]
    ours_kw = [p for p in ours if p[1] == kinds.VAR_KEYWORD]
    ours_main = [p for p in ours if p[1] != kinds.VAR_KEYWORD]
    problems = []
    for i, (name, kind, default) in enumerate(spec_main):
        if i >= len(ours_main):
            problems.append(f"missing parameter {name!r} (position {i})")
            continue
        o_name, o_kind, o_default = ours_main[i]
        if o_name != name:
            problems.append(f"position {i}: {o_name!r}, documented {name!r}")
            continue
        if o_kind != kind:
            problems.append(f"{name}: kind {o_kind.description}, documented {kind.description}")
        if name in entry.deviations:
            continue
        if default is EMPTY:
            if o_default is not EMPTY and name not in entry.optional:
                problems.append(f"{name}: has default {o_default!r}, documented as required")
        elif not same_default(o_default, default):
            problems.append(f"{name}: default {o_default!r}, documented {default!r}")
    for name, kind, default in ours_main[len(spec_main) :]:
        extra_ok = default is not EMPTY or kind == kinds.VAR_POSITIONAL
        if not extra_ok:
            problems.append(f"extra required parameter {name!r} after the documented ones")
    if spec_kw and not ours_kw:
        problems.append(f"missing **{spec_kw[0][0]}")
    return problems


# ------------------------------------------------------------------ resolving names


def resolve(module: ModuleType, path: str) -> tuple[Any, Any, str]:
    """Return ``(owner, object, attribute name)`` for a dotted path below ``module``."""
    owner: Any = module
    parts = path.split(".")
    for part in parts[:-1]:
        owner = getattr(owner, part)
    return owner, getattr(owner, parts[-1]), parts[-1]


def _grid(mod: ModuleType) -> Any:
    """A small VoxelGridPhantom, built the way MRzeroCore 1.2.0 takes it (3x4 affine)."""
    shape = (4, 4, 1)
    ones = torch.ones(shape)
    affine = torch.tensor([[50.0, 0, 0, -100], [0, 50, 0, -100], [0, 0, 8, -4]])
    return mod.VoxelGridPhantom(
        ones, ones, 0.1 * ones, 0.05 * ones, ones, 0 * ones, ones[None], ones[None], affine
    )


FACTORIES: dict[str, Callable[[ModuleType], Any]] = {
    "Sequence": lambda m: m.Sequence([m.Repetition.zero(2)]),
    "Repetition": lambda m: m.Repetition.zero(2),
    "Pulse": lambda m: m.Pulse.zero(),
    "SimData": lambda m: _grid(m).build(),
    "VoxelGridPhantom": _grid,
    "CustomVoxelPhantom": lambda m: m.CustomVoxelPhantom([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]]),
}


def _params(entries: list[Entry]) -> list[Any]:
    out = []
    for e in entries:
        marks = [pytest.mark.xfail(strict=True, reason=e.blocked)] if e.blocked else []
        out.append(pytest.param(e, id=e.path, marks=marks))
    return out


def _is_kind(owner: Any, name: str, kind: str) -> bool:
    raw = inspect.getattr_static(owner, name)
    checks = {
        "module": lambda: isinstance(raw, ModuleType),
        "function": lambda: inspect.isfunction(raw),
        "class": lambda: inspect.isclass(raw),
        "method": lambda: inspect.isfunction(raw),
        "classmethod": lambda: isinstance(raw, classmethod),
        "property": lambda: isinstance(raw, property),
        "constant": lambda: not callable(raw),
        "member": lambda: isinstance(getattr(owner, name), enum.Enum),
    }
    return checks[kind]()


# ------------------------------------------------------------------ the walk


def test_list_is_well_formed() -> None:
    paths = [e.path for e in API]
    assert len(paths) == len(set(paths)), "duplicate entries"
    kinds = {
        "module",
        "function",
        "class",
        "method",
        "classmethod",
        "property",
        "attribute",
        "constant",
        "member",
    }
    for e in API:
        assert e.kind in kinds, e
        if e.sig is not None:
            names = [p[0] for p in parse_sig(e.sig)]
            assert set(e.optional) <= set(names), e
            assert set(e.deviations) <= set(names), e
    # the walk covers what the documentation's API overview lists
    for name in (
        "Sequence",
        "Repetition",
        "Pulse",
        "PulseUsage",
        "chain",
        "SimData",
        "VoxelGridPhantom",
        "TissueDict",
        "CustomVoxelPhantom",
        "PhantomUnits",
        "PhantomSystem",
        "NiftiRef",
        "NiftiMapping",
        "NiftiTissue",
        "NiftiPhantom",
        "compute_graph",
        "compute_graph_ext",
        "execute_graph",
        "Graph",
        "isochromat_sim",
        "reco_adjoint",
        "util",
        "sig_to_mrd",
        "pulseq_write_cartesian",
        "generate_brainweb_phantoms",
    ):
        assert name in paths


@pytest.mark.parametrize("entry", _params([e for e in API if e.kind != "attribute"]))
def test_documented_name_exists_with_its_signature(entry: Entry) -> None:
    owner, obj, name = resolve(mr0core, entry.path)
    assert _is_kind(owner, name, entry.kind), f"{entry.path} is not a {entry.kind}"
    if entry.kind in ("constant", "member"):
        value = obj.value if entry.kind == "member" else obj
        assert value == entry.value
    if entry.sig is not None:
        problems = mismatches(params_of(obj, entry.kind), parse_sig(entry.sig), entry)
        assert not problems, f"{entry.path}: " + "; ".join(problems)
    if entry.returns is not None:
        target = inspect.getattr_static(owner, name)
        func = target.fget if isinstance(target, property) else obj
        annotation = str(inspect.signature(func).return_annotation)
        if annotation == "Self":  # self-typed (mr0core.tensordata): returns the owner's class
            annotation = owner.__name__
        assert entry.returns in annotation, f"{entry.path} returns {annotation}"


@pytest.mark.parametrize("entry", _params([e for e in API if e.kind in ("attribute", "property")]))
def test_documented_attribute_exists_on_an_instance(entry: Entry) -> None:
    cls_name, attr = entry.path.split(".")
    if cls_name not in FACTORIES:
        pytest.skip(f"no instance factory for {cls_name}")
    instance = FACTORIES[cls_name](mr0core)
    assert hasattr(instance, attr), f"{entry.path} missing on an instance"


# ------------------------------------------------------------------ against MRzeroCore 1.2.0


@pytest.fixture(scope="module")
def mz() -> ModuleType:
    return importlib.import_module("MRzeroCore")


def _reference_path(entry: Entry) -> str:
    return entry.path if entry.ref is None else entry.ref


@pytest.mark.reference
@pytest.mark.parametrize("entry", [e for e in API if e.ref != ""], ids=lambda e: e.path)
def test_list_follows_installed_mrzero(mz: ModuleType, entry: Entry) -> None:
    """The list's signatures, values and kinds are those of the installed MRzeroCore."""
    if entry.kind in ("attribute", "property"):
        cls_name, attr = entry.path.split(".")
        if cls_name in FACTORIES:
            assert hasattr(FACTORIES[cls_name](mz), attr), entry.path
        return
    _, obj, _ = resolve(mz, _reference_path(entry))
    if entry.kind in ("constant", "member"):
        assert (obj.value if entry.kind == "member" else obj) == entry.value
    if entry.sig is not None:
        theirs = params_of(obj, entry.kind)
        spec = parse_sig(entry.sig)
        assert [(n, k) for n, k, _ in theirs] == [(n, k) for n, k, _ in spec], entry.path
        for (n, _, d_theirs), (_, _, d_spec) in zip(theirs, spec, strict=True):
            assert same_default(d_theirs, d_spec), f"{entry.path}.{n}: {d_theirs!r} vs {d_spec!r}"


@pytest.mark.reference
@pytest.mark.parametrize("entry", _params([e for e in API if e.sig is not None and e.ref != ""]))
def test_signature_equals_installed_mrzero(mz: ModuleType, entry: Entry) -> None:
    """mr0core accepts every call MRzeroCore 1.2.0 accepts, with the same defaults."""
    _, theirs, _ = resolve(mz, _reference_path(entry))
    _, ours, _ = resolve(mr0core, entry.path)
    problems = mismatches(params_of(ours, entry.kind), params_of(theirs, entry.kind), entry)
    assert not problems, f"{entry.path}: " + "; ".join(problems)


@pytest.mark.reference
def test_voxel_grid_phantom_takes_mrzero_positional_affine(mz: ModuleType) -> None:
    """The same positional call (3x4 affine) builds the same phantom size in both."""
    ours, theirs = _grid(mr0core), _grid(mz)
    torch.testing.assert_close(ours.size.double(), theirs.size.double())


# ------------------------------------------------------------------ the comparator itself


def test_mismatches_catches_what_it_should() -> None:
    def f(a, b=1, *, c=2): ...

    entry = Entry("f", "function", "(a, b=1)")
    ours = params_of(f, "function")
    assert mismatches(ours, parse_sig("(a, b=1)"), entry) == []  # extra keyword-only: fine
    assert mismatches(ours, parse_sig("(a, b=2)"), entry)  # other default
    assert mismatches(ours, parse_sig("(x, b=1)"), entry)  # other name
    assert mismatches(ours, parse_sig("(a, b=1, d=3)"), entry)  # missing parameter
    assert mismatches(ours, parse_sig("(a, b)"), entry)  # default where none is documented
    assert mismatches(ours, parse_sig("(a, b=1, **kw)"), entry)  # missing **kwargs

    def g(a, b, extra): ...

    assert mismatches(params_of(g, "function"), parse_sig("(a, b)"), entry)  # required extra
    assert same_default([0.2, 0.2], (0.2, 0.2))
    assert same_default(torch.tensor([[1.0, 0.0]]), torch.tensor([[1, 0]]))
    assert not same_default(torch.tensor([[1.0, 0.0]]), None)
    assert not same_default(True, 1)

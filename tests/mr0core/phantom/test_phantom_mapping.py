"""Tests of the mapping-function parser and evaluator of NIfTI phantoms."""

from __future__ import annotations

import ast
import builtins
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mr0core.phantom import mapping
from mr0core.phantom.mapping import (
    MAX_DEPTH,
    MAX_LENGTH,
    VARIABLES,
    BinaryOp,
    MappingError,
    MappingFunc,
    Negate,
    Number,
    Variable,
    parse_mapping,
)


@pytest.fixture
def rmap() -> np.ndarray:
    """A random float64 map with a non-trivial spread."""
    return np.random.default_rng(42).normal(100.0, 30.0, size=(4, 5, 3))


def _np(func: str, x: np.ndarray) -> np.ndarray:
    return parse_mapping(func)(x)


# --------------------------------------------------------------------------------------------
# Variables and statistics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("x_min", np.min),
        ("x_max", np.max),
        ("x_mean", np.mean),
        ("x_std", np.std),
    ],
)
def test_statistics_match_numpy(rmap, name, reference):
    expected = np.full_like(rmap, reference(rmap))
    np.testing.assert_allclose(_np(name, rmap), expected, rtol=1e-12)
    out_t = parse_mapping(name)(torch.from_numpy(rmap))
    np.testing.assert_allclose(out_t.numpy(), expected, rtol=1e-12)


def test_x_std_is_population_std():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert _np("x_std", x)[0] == pytest.approx(np.sqrt(1.25))
    assert parse_mapping("x_std")(torch.tensor([1.0, 2.0, 3.0, 4.0]))[0].item() == pytest.approx(
        np.sqrt(1.25)
    )


def test_x_is_the_voxel_value(rmap):
    out = _np("x", rmap)
    np.testing.assert_array_equal(out, rmap)
    assert out is not rmap
    assert not np.shares_memory(out, rmap)
    t = torch.from_numpy(rmap)
    out_t = parse_mapping("x")(t)
    assert out_t is not t
    assert out_t.data_ptr() != t.data_ptr()


def test_statistics_are_only_computed_when_used():
    calls: list[str] = []

    class Spy(np.ndarray):
        def min(self, *a, **k):
            calls.append("min")
            return np.ndarray.min(self, *a, **k)

        def std(self, *a, **k):
            calls.append("std")
            return np.ndarray.std(self, *a, **k)

    x = np.arange(4.0).view(Spy)
    parse_mapping("x * 2")(x)
    assert calls == []
    parse_mapping("x - x_min")(x)
    assert calls == ["min"]


def test_variables_property():
    assert parse_mapping("x - 420").variables == frozenset({"x"})
    assert parse_mapping("(x - x_min) / (x_max - x_min)").variables == frozenset(
        {"x", "x_min", "x_max"}
    )
    assert parse_mapping("3").variables == frozenset()
    assert parse_mapping("x_mean + x_std + x_min + x_max + x").variables == VARIABLES


def test_str_repr_and_equality():
    f = parse_mapping("x  -  420")
    assert str(f) == "x  -  420"
    assert "x  -  420" in repr(f)
    assert f == MappingFunc("x  -  420")
    assert hash(f) == hash(MappingFunc("x  -  420"))
    assert f != parse_mapping("x - 420")
    with pytest.raises(AttributeError):
        f.source = "x"  # type: ignore[misc]


def test_tree():
    assert parse_mapping("-x * 2").tree == BinaryOp("*", Negate(Variable("x")), Number(2.0))
    assert parse_mapping("1 - 2 - 3").tree == BinaryOp(
        "-", BinaryOp("-", Number(1.0), Number(2.0)), Number(3.0)
    )
    assert parse_mapping("+(x)").tree == Variable("x")


# --------------------------------------------------------------------------------------------
# Operators, precedence, numbers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        ("x + 2", lambda x: x + 2),
        ("x - 2", lambda x: x - 2),
        ("x * 2", lambda x: x * 2),
        ("x / 2", lambda x: x / 2),
        ("2 - x", lambda x: 2 - x),
        ("2 / x", lambda x: 2 / x),
        ("-x", lambda x: -x),
        ("+x", lambda x: x),
        ("--x", lambda x: x),
        ("-x * 2", lambda x: -x * 2),
        ("2 * -x", lambda x: 2 * -x),
        ("2 - -x", lambda x: 2 + x),
        ("-(x + 1)", lambda x: -(x + 1)),
        ("1 + 2 * x", lambda x: 1 + 2 * x),
        ("(1 + 2) * x", lambda x: 3 * x),
        ("x - 1 - 2", lambda x: x - 3),
        ("x / 2 / 4", lambda x: x / 8),
        ("x * x - x / x", lambda x: x * x - 1),
        (" \tx\n+\r1 ", lambda x: x + 1),
    ],
)
def test_operators(rmap, func, expected):
    np.testing.assert_allclose(_np(func, rmap), expected(rmap), rtol=1e-13)
    out_t = parse_mapping(func)(torch.from_numpy(rmap))
    np.testing.assert_allclose(out_t.numpy(), expected(rmap), rtol=1e-13)


@pytest.mark.parametrize(
    ("func", "value"),
    [
        ("8 / 2 / 2", 2.0),
        ("10 - 2 - 3", 5.0),
        ("2 + 3 * 4", 14.0),
        ("(2 + 3) * 4", 20.0),
        ("2 * 3 + 4", 10.0),
        ("12 / 3 * 2", 8.0),
        ("12 / (3 * 2)", 2.0),
        ("-2 * -3", 6.0),
        ("-(2 - 5)", 3.0),
        ("((((1))))", 1.0),
        ("420", 420.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("5.", 5.0),
        ("1e-3", 1e-3),
        ("1E3", 1000.0),
        ("2.5e+2", 250.0),
        (".5e1", 5.0),
        ("007", 7.0),
    ],
)
def test_constant_expressions(func, value):
    out = _np(func, np.zeros(3))
    np.testing.assert_array_equal(out, np.full(3, value))
    out_t = parse_mapping(func)(torch.zeros(3, dtype=torch.float64))
    np.testing.assert_array_equal(out_t.numpy(), np.full(3, value))


def test_division_by_zero_is_ieee():
    x = np.array([-1.0, 0.0, 1.0])
    with np.errstate(all="raise"):  # the evaluator must not warn or raise
        np.testing.assert_array_equal(_np("x / 0", x), [-np.inf, np.nan, np.inf])
        np.testing.assert_array_equal(_np("1 / 0", x), [np.inf] * 3)
        np.testing.assert_array_equal(_np("-1 / 0", x), [-np.inf] * 3)
        assert np.isnan(_np("0 / 0", x)).all()
        assert np.isnan(_np("(x - x_mean) / x_std", np.ones(3))).all()
    t = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(
        parse_mapping("x / 0")(t), torch.tensor([-torch.inf, torch.nan, torch.inf]), equal_nan=True
    )
    torch.testing.assert_close(parse_mapping("1 / 0")(t), torch.full((3,), torch.inf))
    assert torch.isnan(parse_mapping("0 / (x - x)")(t)).all()


# --------------------------------------------------------------------------------------------
# Spec examples
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        ("x - 420", lambda x: x - 420.0),
        ("(x - x_min) / (x_max - x_min)", lambda x: (x - x.min()) / (x.max() - x.min())),
        (
            "(x - x_mean) * 3 / x_std + x_mean",
            lambda x: (x - x.mean()) * 3.0 / x.std() + x.mean(),
        ),
    ],
)
def test_spec_examples(rmap, func, expected):
    np.testing.assert_allclose(_np(func, rmap), expected(rmap), rtol=1e-12)
    out_t = parse_mapping(func)(torch.from_numpy(rmap))
    np.testing.assert_allclose(out_t.numpy(), expected(rmap), rtol=1e-12)
    x32 = rmap.astype(np.float32)
    out32 = parse_mapping(func)(torch.from_numpy(x32))
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), expected(rmap), rtol=1e-4, atol=1e-4)


def test_normalisation_spans_unit_interval(rmap):
    out = _np("(x - x_min) / (x_max - x_min)", rmap)
    assert out.min() == 0.0
    assert out.max() == 1.0


# --------------------------------------------------------------------------------------------
# Rejection of invalid and hostile input
# --------------------------------------------------------------------------------------------

HOSTILE = [
    "",
    "   ",
    "y",
    "os",
    "x_median",
    "X",
    "X_MIN",
    "__import__('os')",
    "__import__('os').system('true')",
    "x.real",
    "x.__class__",
    "x.__class__.__bases__",
    "f(x)",
    "abs(x)",
    "x(2)",
    "x[0]",
    "x ** 2",
    "x^2",
    "x % 2",
    "x // 2",
    "x, 1",
    "(x, 1)",
    "'x'",
    '"x"',
    "(x",
    "((x)",
    "x)",
    "(x))",
    "()",
    "x 2",
    "x x",
    "2 x",
    "x +",
    "* x",
    "x +* 2",
    "x */ 2",
    "-",
    "1.2.3",
    "2x",
    "1e",
    "1e+",
    "1_000",
    "1e999",
    "x = 1",
    "x == 1",
    "x < 1",
    "lambda: 1",
    "x if x else 1",
    "x; 1",
    "x\\",
    "x @ x",
    "x & 1",
    "~x",
    "not x",
    "x\x00",
    "ｘ",  # full-width x
    "١",  # Arabic-Indic digit one
    "x\u00a0+ 1",
    "{x}",
    "$x",
    "#x",
]


@pytest.mark.parametrize("func", HOSTILE)
def test_rejected(func):
    with pytest.raises(MappingError):
        parse_mapping(func)


@pytest.mark.parametrize("func", [None, 42, 1.5, b"x", ["x"], {"x": 1}, ("x",)])
def test_non_str_rejected(func):
    with pytest.raises(MappingError, match="must be a str"):
        parse_mapping(func)


def test_mapping_error_is_value_error():
    with pytest.raises(ValueError, match="mapping function"):
        parse_mapping("y")


@pytest.mark.parametrize(
    ("func", "column", "fragment"),
    [
        ("x +* 2", 4, "unexpected '*'"),
        ("x 2", 3, "unexpected '2'"),
        ("x + y", 5, "unknown name 'y'"),
        ("1.2.3", 1, "malformed number '1.2.3'"),
        ("x ** 2", 3, "'**'"),
        ("(x", 1, "missing ')'"),
        ("x +", 4, "end of expression"),
        ("x.real", 2, "unexpected '.'"),
    ],
)
def test_error_names_expression_and_column(func, column, fragment):
    with pytest.raises(MappingError) as info:
        parse_mapping(func)
    message = str(info.value)
    assert message.startswith(f"mapping function {func!r}: ")
    assert f"at column {column}" in message
    assert fragment in message
    assert info.value.column == column
    assert info.value.func == func


def test_error_message_example():
    with pytest.raises(MappingError) as info:
        parse_mapping("x +* 2")
    assert str(info.value) == "mapping function 'x +* 2': unexpected '*' at column 4"


def test_error_pickles():
    with pytest.raises(MappingError) as info:
        parse_mapping("x +* 2")
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value)
    assert again.column == 4


def test_length_bound():
    ok = "x" + "+x" * ((MAX_LENGTH - 1) // 2)
    assert len(ok) <= MAX_LENGTH
    n_terms = ok.count("x")
    np.testing.assert_allclose(parse_mapping(ok)(np.arange(3.0)), n_terms * np.arange(3.0))
    too_long = "x" + "+x" * MAX_LENGTH
    with pytest.raises(MappingError, match="too long") as info:
        parse_mapping(too_long)
    assert len(str(info.value)) < 200  # the message shortens the expression
    with pytest.raises(MappingError, match="too long"):
        parse_mapping(" " * (MAX_LENGTH + 1))


def test_depth_bound():
    ok = "(" * MAX_DEPTH + "x" + ")" * MAX_DEPTH
    np.testing.assert_array_equal(parse_mapping(ok)(np.arange(3.0)), np.arange(3.0))
    for deep in [
        "(" * (MAX_DEPTH + 1) + "x" + ")" * (MAX_DEPTH + 1),
        "-" * (MAX_DEPTH + 1) + "x",
        "(-" * (MAX_DEPTH // 2 + 1) + "x" + ")" * (MAX_DEPTH // 2 + 1),
        "(" * (MAX_LENGTH // 2),  # hostile and unbalanced
    ]:
        with pytest.raises(MappingError, match="nesting deeper"):
            parse_mapping(deep)


def test_long_flat_expression_evaluates_without_recursion():
    func = "x" + "-x" * ((MAX_LENGTH - 1) // 2)
    n_sub = func.count("-")
    t = torch.arange(4.0)
    torch.testing.assert_close(parse_mapping(func)(t), t * (1 - n_sub))


# --------------------------------------------------------------------------------------------
# No eval/exec
# --------------------------------------------------------------------------------------------


def test_does_not_use_eval(monkeypatch, rmap):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec/compile must not be used")

    with monkeypatch.context() as patch:
        for name in ["eval", "exec", "compile"]:
            patch.setattr(builtins, name, forbidden)
        patch.setattr(ast, "parse", forbidden)
        f = parse_mapping("(x - x_mean) * 3 / x_std + x_mean")
        out = f(rmap)
        out_t = f(torch.from_numpy(rmap))
    expected = (rmap - rmap.mean()) * 3.0 / rmap.std() + rmap.mean()
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    np.testing.assert_allclose(out_t.numpy(), expected, rtol=1e-12)


def test_module_source_has_no_eval():
    tree = ast.parse(Path(mapping.__file__).read_text(encoding="utf-8"))
    banned = {"eval", "exec", "compile", "__import__", "getattr", "globals", "locals"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            assert node.id not in banned, f"{node.id} used at line {node.lineno}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [alias.name for alias in node.names] + [getattr(node, "module", None)]
            assert "ast" not in modules


# --------------------------------------------------------------------------------------------
# Input types, dtypes, devices, autograd
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_keeps_float_dtype(dtype):
    x = np.linspace(0.0, 1.0, 7, dtype=dtype).reshape(7, 1)
    for func in ["x - 420", "(x - x_mean) * 3 / x_std + x_mean", "3", "x_max", "x"]:
        out = parse_mapping(func)(x)
        assert type(out) is np.ndarray
        assert out.dtype == dtype
        assert out.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_torch_keeps_float_dtype(dtype):
    x = torch.linspace(0.0, 1.0, 7, dtype=dtype).reshape(7, 1)
    for func in ["x - 420", "(x - x_mean) * 3 / x_std + x_mean", "3", "x_max", "x", "1 / 0"]:
        out = parse_mapping(func)(x)
        assert isinstance(out, torch.Tensor)
        assert out.dtype == dtype
        assert out.shape == x.shape


def test_integer_and_bool_maps_become_float():
    out = parse_mapping("x / 2")(np.arange(4))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [0.0, 0.5, 1.0, 1.5])
    out_t = parse_mapping("x / 2")(torch.arange(4))
    assert out_t.dtype == torch.get_default_dtype()
    torch.testing.assert_close(out_t, torch.tensor([0.0, 0.5, 1.0, 1.5]))
    assert parse_mapping("x * 2")(np.array([True, False])).tolist() == [2.0, 0.0]
    assert parse_mapping("x * 2")(torch.tensor([True, False])).tolist() == [2.0, 0.0]


def test_rejects_unsupported_inputs():
    f = parse_mapping("x")
    for bad in [[1.0, 2.0], 3.0, "x", None]:
        with pytest.raises(TypeError):
            f(bad)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        f(np.array(["a"]))


def test_complex_maps_follow_numpy():
    """Complex maps (B1 with phase): complex mean, real std, numpy's order for min and max."""
    x = np.array([1 + 2j, 1 - 1j, -0.5 + 3j, 2 - 2j, 2 + 0.5j])
    for source, expected in [
        ("(x - x_mean) * 3 / x_std + x_mean", (x - x.mean()) * 3 / x.std() + x.mean()),
        ("(x - x_min) / (x_max - x_min)", (x - x.min()) / (x.max() - x.min())),
    ]:
        f = parse_mapping(source)
        np.testing.assert_allclose(f(x), expected, rtol=1e-12)
        np.testing.assert_allclose(f(torch.from_numpy(x)).numpy(), expected, rtol=1e-12)
    # x_min / x_max: lowest real part, ties broken by the imaginary part (numpy's order)
    assert parse_mapping("x_min")(x)[0] == -0.5 + 3j
    assert parse_mapping("x_max")(torch.from_numpy(x))[0].item() == 2 + 0.5j
    assert parse_mapping("x_std")(x).dtype == np.complex128  # same dtype as the map


def test_scalar_and_empty_maps():
    np.testing.assert_array_equal(parse_mapping("x - x_mean + 1")(np.array(5.0)), np.array(1.0))
    assert parse_mapping("x - x_mean + 1")(torch.tensor(5.0)).item() == 1.0
    assert parse_mapping("x - x_mean")(np.zeros((0, 3))).shape == (0, 3)
    assert parse_mapping("x_std")(torch.zeros(0, 3)).shape == (0, 3)


def test_does_not_modify_input(rmap):
    copy = rmap.copy()
    parse_mapping("-(x - x_mean) * 3 / x_std + x_mean")(rmap)
    np.testing.assert_array_equal(rmap, copy)


def test_reusable_and_picklable(rmap):
    f = parse_mapping("(x - x_min) / (x_max - x_min)")
    first = f(rmap)
    second = f(rmap * 2)
    np.testing.assert_allclose(first, second, rtol=1e-12)
    g = pickle.loads(pickle.dumps(f))
    assert g == f
    np.testing.assert_array_equal(g(rmap), first)


def test_autograd():
    x = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64, requires_grad=True)
    (parse_mapping("x * x - 3 * x")(x)).sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach() - 3)

    for func in [
        "x - 420",
        "(x - x_min) / (x_max - x_min)",
        "(x - x_mean) * 3 / x_std + x_mean",
        "x_std * x_mean",
    ]:
        f = parse_mapping(func)
        y = torch.tensor([0.3, -1.2, 2.5, 0.7, 1.9], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(f, (y,))


@pytest.mark.cuda
def test_cuda(rmap):
    x = torch.from_numpy(rmap).cuda()
    f = parse_mapping("(x - x_mean) * 3 / x_std + x_mean")
    out = f(x)
    assert out.device == x.device
    np.testing.assert_allclose(out.cpu().numpy(), f(rmap), rtol=1e-12)

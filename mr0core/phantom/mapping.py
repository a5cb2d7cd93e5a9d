"""Mapping functions of the NIfTI phantom specification (v1).

A tissue property of a NIfTI phantom may be a *mapping*: a map loaded from a file plus an
equation that is evaluated per voxel, for example
``{"file": "subj42_dB0.nii.gz[0]", "func": "x - 420"}``. The equation language is tiny:

* the binary operators ``+ - * /`` and parentheses,
* unary ``-`` and ``+``,
* numbers: integers, decimals and scientific notation (``420``, ``0.5``, ``.5``, ``5.``,
  ``1e-3``, ``2.5E+4``),
* exactly five variables: ``x`` (the value of the current voxel) and ``x_min``, ``x_max``,
  ``x_mean``, ``x_std`` (minimum, maximum, mean and standard deviation of the loaded map).

Precedence is the usual one: unary signs bind tighter than ``*`` and ``/``, which bind tighter
than ``+`` and ``-``; binary operators are left associative (``8 / 2 / 2`` is 2).
Whitespace (space, tab, newline) is ignored; names are case-sensitive.

Why our own evaluator
---------------------
Mapping functions come from phantom files, and phantom files may come from anywhere. Handing
the string to Python's ``eval`` (or ``exec``, ``compile``, the ``ast`` module plus evaluation)
would let a phantom execute arbitrary code, e.g. ``__import__('os').system(...)``; "restricted"
``eval`` tricks are known to be escapable. This module therefore has its own tokenizer,
recursive-descent parser and stack evaluator, which know nothing but numbers, the five
variables and the four operators. Anything else is rejected with a :class:`MappingError` that
names the expression and the (1-based) character column of the problem. Input length is bounded
by :data:`MAX_LENGTH` and nesting (parentheses and unary signs) by :data:`MAX_DEPTH`, so hostile
input cannot exhaust memory or the Python stack; evaluation itself is iterative.

Evaluation semantics
--------------------
* :class:`MappingFunc` is callable on a ``torch.Tensor`` (any device) or a ``numpy.ndarray`` and
  returns the same type and shape. Floating dtypes are kept; integer and boolean maps are
  converted to the default float dtype (``torch.get_default_dtype()`` for tensors, ``float64``
  for arrays). Complex maps (B1 channels with their phase) are evaluated in complex arithmetic,
  with numpy's conventions: ``x_mean`` is the complex mean, ``x_std`` the real population
  standard deviation ``sqrt(mean |x - x_mean|²)``, and ``x_min``/``x_max`` are the voxel values
  first and last in numpy's complex order (by real part, then imaginary part).
* The statistics are computed over *all* voxels of the map passed in (NaN voxels included, so a
  NaN makes them NaN); only those the expression uses are computed. ``x_std`` is the
  *population* standard deviation (``ddof=0``, numpy's default; ``correction=0`` in torch).
  For an empty map they are NaN.
* Division by zero and overflow follow IEEE 754 (``±inf`` or ``nan``), also for constant
  sub-expressions such as ``1 / 0``; numpy floating-point warnings are suppressed.
* With torch, evaluation is differentiable by autograd with respect to ``x``, including through
  the statistics.
* The result never shares memory with the input.
"""

from __future__ import annotations

import math
import operator
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, overload

import numpy as np
import torch

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "VARIABLES",
    "BinaryOp",
    "MappingError",
    "MappingFunc",
    "Negate",
    "Node",
    "Number",
    "Variable",
    "parse_mapping",
]

VARIABLES: frozenset[str] = frozenset({"x", "x_min", "x_max", "x_mean", "x_std"})
"""The names a mapping function may use."""

MAX_LENGTH = 1000
"""Longest accepted mapping function, in characters."""

MAX_DEPTH = 100
"""Deepest accepted nesting of parentheses and unary signs."""

_VARIABLE_LIST = "x, x_min, x_max, x_mean, x_std"
_SHOWN_LENGTH = 60  # longer expressions are shortened in error messages


class MappingError(ValueError):
    """A mapping function that is not valid.

    Parameters
    ----------
    func
        The offending mapping function (any object if it was not a string).
    problem
        What is wrong, e.g. ``"unexpected '*'"``.
    column
        1-based character column of the problem in ``func``, if there is one.
    hint
        Optional explanation appended in parentheses.
    """

    def __init__(
        self, func: object, problem: str, column: int | None = None, hint: str | None = None
    ) -> None:
        self.func = func
        self.problem = problem
        self.column = column
        self.hint = hint
        if isinstance(func, str):
            shown = func if len(func) <= _SHOWN_LENGTH else func[: _SHOWN_LENGTH - 3] + "..."
            message = f"mapping function {shown!r}: {problem}"
        else:
            message = f"mapping function: {problem}"
        if column is not None:
            message += f" at column {column}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.func, self.problem, self.column, self.hint))


# --------------------------------------------------------------------------------------------
# Syntax tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    """A numeric literal."""

    value: float


@dataclass(frozen=True)
class Variable:
    """One of :data:`VARIABLES`."""

    name: str


@dataclass(frozen=True)
class Negate:
    """Unary minus."""

    operand: Node


@dataclass(frozen=True)
class BinaryOp:
    """``left op right`` with ``op`` one of ``+ - * /``."""

    op: str
    left: Node
    right: Node


Node = Number | Variable | Negate | BinaryOp
"""A node of the syntax tree of a mapping function."""


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_.")
_WHITESPACE = frozenset(" \t\r\n")
_OPERATORS = frozenset("+-*/()")
_HINTS = {
    "**": "powers are not supported",
    "^": "powers are not supported",
    "//": "floor division is not supported",
    "%": "modulo is not supported",
    "[": "indexing is not supported",
    "]": "indexing is not supported",
    "'": "strings are not supported",
    '"': "strings are not supported",
    ",": "function calls and tuples are not supported",
}


class _Token(NamedTuple):
    kind: str  # "num", "name", "op" or "end"
    text: str
    column: int  # 1-based


def _tokenize(source: str) -> Iterator[_Token]:
    """Yield the tokens of ``source`` lazily, so errors come out in textual order."""
    pos = 0
    n = len(source)
    while pos < n:
        ch = source[pos]
        if ch in _WHITESPACE:
            pos += 1
            continue
        column = pos + 1
        if ch.isascii() and (ch.isdigit() or (ch == "." and source[pos + 1 : pos + 2].isdigit())):
            match = _NUMBER.match(source, pos)
            assert match is not None  # guaranteed by the test above
            end = stop = match.end()
            while stop < n and (source[stop] in _WORD_CHARS):
                stop += 1
            if stop > end:  # e.g. "1.2.3", "2x", "1e", "1_000"
                raise MappingError(source, f"malformed number {source[pos:stop]!r}", column)
            yield _Token("num", match.group(), column)
            pos = end
            continue
        match = _NAME.match(source, pos)
        if match is not None:
            name = match.group()
            if name not in VARIABLES:
                raise MappingError(
                    source, f"unknown name {name!r}", column, f"allowed: {_VARIABLE_LIST}"
                )
            yield _Token("name", name, column)
            pos = match.end()
            continue
        pair = source[pos : pos + 2]
        if pair in _HINTS:
            raise MappingError(source, f"unexpected {pair!r}", column, _HINTS[pair])
        if ch in _OPERATORS:
            yield _Token("op", ch, column)
            pos += 1
            continue
        raise MappingError(source, f"unexpected {ch!r}", column, _HINTS.get(ch))
    yield _Token("end", "", n + 1)


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------

# Instructions of the postfix program: (opcode, argument).
_Instruction = tuple[str, Any]


class _Parser:
    """Recursive-descent parser that builds the tree and a postfix program side by side.

    Grammar::

        expression := term (("+" | "-") term)*
        term       := unary (("*" | "/") unary)*
        unary      := ("+" | "-") unary | primary
        primary    := NUMBER | NAME | "(" expression ")"
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.program: list[_Instruction] = []
        self.variables: set[str] = set()
        self._tokens = _tokenize(source)
        self._token = next(self._tokens)
        self._depth = 0

    def parse(self) -> Node:
        if self._token.kind == "end":
            raise MappingError(self.source, "empty expression")
        tree = self._expression()
        if self._token.kind != "end":
            raise self._unexpected()
        return tree

    def _advance(self) -> _Token:
        token = self._token
        self._token = next(self._tokens)
        return token

    def _unexpected(self) -> MappingError:
        token = self._token
        if token.kind == "end":
            return MappingError(self.source, "unexpected end of expression", token.column)
        return MappingError(self.source, f"unexpected {token.text!r}", token.column)

    def _enter(self, token: _Token) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise MappingError(self.source, f"nesting deeper than {MAX_DEPTH}", token.column)

    def _is_op(self, ops: str) -> bool:
        return self._token.kind == "op" and self._token.text in ops

    def _expression(self) -> Node:
        node = self._term()
        while self._is_op("+-"):
            op = self._advance().text
            node = BinaryOp(op, node, self._term())
            self.program.append((op, None))
        return node

    def _term(self) -> Node:
        node = self._unary()
        while self._is_op("*/"):
            op = self._advance().text
            node = BinaryOp(op, node, self._unary())
            self.program.append((op, None))
        return node

    def _unary(self) -> Node:
        if not self._is_op("+-"):
            return self._primary()
        sign = self._advance()
        self._enter(sign)
        operand = self._unary()
        self._depth -= 1
        if sign.text == "+":
            return operand
        self.program.append(("neg", None))
        return Negate(operand)

    def _primary(self) -> Node:
        token = self._token
        if token.kind == "num":
            self._advance()
            value = float(token.text)
            if not math.isfinite(value):
                raise MappingError(
                    self.source, f"number {token.text!r} is out of range", token.column
                )
            self.program.append(("num", value))
            return Number(value)
        if token.kind == "name":
            self._advance()
            self.variables.add(token.text)
            self.program.append(("var", token.text))
            return Variable(token.text)
        if self._is_op("("):
            self._advance()
            self._enter(token)
            node = self._expression()
            if not self._is_op(")"):
                if self._token.kind == "end":
                    raise MappingError(self.source, "missing ')' for the '(' opened", token.column)
                raise self._unexpected()
            self._advance()
            self._depth -= 1
            return node
        raise self._unexpected()


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _divide(left: Any, right: Any) -> Any:
    """``left / right`` with IEEE semantics, also for two Python floats."""
    if isinstance(left, float) and isinstance(right, float):
        with np.errstate(all="ignore"):
            return float(np.float64(left) / np.float64(right))
    return left / right


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _divide,
}


def _run(
    program: tuple[_Instruction, ...], values: dict[str, Any], literal: Callable[[str], Any]
) -> Any:
    """Evaluate a postfix program with an explicit stack (no recursion)."""
    stack: list[Any] = []
    for opcode, argument in program:
        if opcode == "num":
            stack.append(literal(argument))
        elif opcode == "var":
            stack.append(values[argument])
        elif opcode == "neg":
            stack.append(-stack.pop())
        else:
            right = stack.pop()
            stack.append(_BINARY[opcode](stack.pop(), right))
    return stack.pop()


def _torch_statistics(x: torch.Tensor, names: frozenset[str]) -> dict[str, Any]:
    if x.numel() == 0:
        nan = x.new_full((), math.nan)
        return {name: nan for name in names}
    stats: dict[str, Any] = {}
    if "x_min" in names:
        stats["x_min"] = _complex_extreme(x, largest=False) if x.is_complex() else x.min()
    if "x_max" in names:
        stats["x_max"] = _complex_extreme(x, largest=True) if x.is_complex() else x.max()
    if "x_mean" in names:
        stats["x_mean"] = x.mean()
    if "x_std" in names:
        stats["x_std"] = x.std(correction=0)
    return stats


def _complex_extreme(x: torch.Tensor, largest: bool) -> torch.Tensor:
    """Return the first (last) value of ``x`` in numpy's complex order: real, then imaginary."""
    flat = x.reshape(-1)
    real = flat.real.detach()
    edge = real.max() if largest else real.min()
    imag = flat.imag.detach()
    fill = -math.inf if largest else math.inf
    imag = torch.where(real == edge, imag, torch.full_like(imag, fill))
    index = torch.argmax(imag) if largest else torch.argmin(imag)
    return flat[index]


def _numpy_statistics(x: np.ndarray, names: frozenset[str]) -> dict[str, Any]:
    if x.size == 0:
        nan = x.dtype.type(math.nan)
        return {name: nan for name in names}
    stats: dict[str, Any] = {}
    if "x_min" in names:
        stats["x_min"] = x.min()
    if "x_max" in names:
        stats["x_max"] = x.max()
    if "x_mean" in names:
        stats["x_mean"] = x.mean()
    if "x_std" in names:
        stats["x_std"] = x.std()
    return stats


@dataclass(frozen=True)
class MappingFunc:
    """A parsed, reusable mapping function; call it on a map to evaluate it per voxel.

    Construct it with :func:`parse_mapping` (or ``MappingFunc(source)``, which is the same);
    invalid sources raise :class:`MappingError`. Two instances are equal when their sources are.

    Parameters
    ----------
    source
        The equation, e.g. ``"(x - x_min) / (x_max - x_min)"``.

    Attributes
    ----------
    source
        The equation as given.
    tree
        The syntax tree (:data:`Node`).
    """

    source: str
    tree: Node = field(init=False, repr=False, compare=False)
    _program: tuple[_Instruction, ...] = field(init=False, repr=False, compare=False)
    _variables: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        source = self.source
        if not isinstance(source, str):
            raise MappingError(source, f"must be a str, not {type(source).__name__}")
        source = str(source)  # a plain str, also for str subclasses
        if len(source) > MAX_LENGTH:
            raise MappingError(source, f"too long ({len(source)} characters, at most {MAX_LENGTH})")
        parser = _Parser(source)
        tree = parser.parse()
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "tree", tree)
        object.__setattr__(self, "_program", tuple(parser.program))
        object.__setattr__(self, "_variables", frozenset(parser.variables))

    @property
    def variables(self) -> frozenset[str]:
        """The variables the expression uses, a subset of :data:`VARIABLES`."""
        return self._variables

    def __str__(self) -> str:
        return self.source

    @overload
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    @overload
    def __call__(self, x: np.ndarray) -> np.ndarray: ...

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Evaluate the mapping for every voxel of ``x``.

        Parameters
        ----------
        x
            The loaded map, a tensor (any device) or an array of any shape. The statistics
            ``x_min``, ``x_max``, ``x_mean`` and ``x_std`` (population, ``ddof=0``) are taken
            over all of its voxels.

        Returns
        -------
        torch.Tensor or numpy.ndarray
            Same type, shape and (floating) dtype as ``x``, on the same device; a new object.

        Raises
        ------
        TypeError
            If ``x`` is neither a tensor nor an array, or is not numeric.
        """
        if isinstance(x, torch.Tensor):
            return self._evaluate_torch(x)
        if isinstance(x, np.ndarray):
            return self._evaluate_numpy(x)
        raise TypeError(
            f"mapping function {self.source!r}: expected a torch.Tensor or numpy.ndarray, "
            f"got {type(x).__name__}"
        )

    def _evaluate_torch(self, x: torch.Tensor) -> torch.Tensor:
        keep = x.is_floating_point() or x.is_complex()
        xf = x if keep else x.to(torch.get_default_dtype())
        values = _torch_statistics(xf, self._variables)
        values["x"] = xf
        value = _run(self._program, values, float)
        if isinstance(value, float):  # constant expression
            return torch.full_like(xf, value)
        result: torch.Tensor = value
        if result is x:  # the expression is just "x"
            return result.clone()
        if result.shape != xf.shape:  # depends on statistics only
            result = result.expand(xf.shape).clone()
        return result

    def _evaluate_numpy(self, x: np.ndarray) -> np.ndarray:
        if np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.complexfloating):
            xf = x
        elif np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.bool_):
            xf = x.astype(np.float64)
        else:
            raise TypeError(
                f"mapping function {self.source!r}: maps of dtype {x.dtype} are not supported"
            )
        with np.errstate(all="ignore"):
            values = _numpy_statistics(xf, self._variables)
            values["x"] = xf
            result = _run(self._program, values, xf.dtype.type)
            out: np.ndarray = np.asarray(result, dtype=xf.dtype)
        if out.shape != xf.shape:
            expanded: np.ndarray = np.broadcast_to(out, xf.shape).copy()
            return expanded
        if np.may_share_memory(out, x):
            copied: np.ndarray = out.copy()
            return copied
        return out


def parse_mapping(func: str) -> MappingFunc:
    """Parse a mapping function of the NIfTI phantom specification.

    Parameters
    ----------
    func
        The equation, e.g. ``"x - 420"`` or ``"(x - x_mean) * 3 / x_std + x_mean"``.

    Returns
    -------
    MappingFunc
        The parsed function, callable on tensors and arrays.

    Raises
    ------
    MappingError
        If ``func`` is not a string, too long, too deeply nested, or not a valid expression.
    """
    return MappingFunc(func)

"""One base for objects that hold tensors: ``to``, ``cpu``, ``cuda``, ``device`` and ``select``.

:class:`TensorContainer` finds an object's tensors by walking its attributes (``__dict__`` and
``__slots__``): a tensor is converted, lists, tuples and dicts are walked, a nested
:class:`TensorContainer` is converted by the same rules, and anything else (numbers, strings,
enums, callables, numpy arrays) is shared with the copy. A container that is also a ``list``
(:class:`~mr0core.Sequence`) converts its items too. So a tensor field added to a class later
moves with the rest, with no ``to()`` to update.

Objects (and tensors) that appear twice in one container are converted once and stay shared in
the copy: the shaped-RF waveform that many pulses of a sequence carry is one waveform on the new
device, too.

``select(mask)`` picks entries along a class's *selection axis*: voxels of
:class:`~mr0core.phantom.SimData`, readouts of :class:`~mr0core.recon.KData`, repetitions of a
:class:`~mr0core.Sequence`, events of a :class:`~mr0core.Repetition`. A class names the axis of
each tensor field in ``_SELECT_AXES`` and the tensor fields that ``select`` leaves alone in
``_SELECT_KEEP``; a tensor field named in neither makes ``select`` raise, so a field added later
cannot be silently left at the old length.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar

import torch

__all__ = ["TensorContainer", "cuda_device"]

Self = TypeVar("Self", bound="TensorContainer")

_COMPLEX_OF: dict[torch.dtype, torch.dtype] = {
    torch.float16: torch.complex32,
    torch.float32: torch.complex64,
    torch.float64: torch.complex128,
}
"""The complex dtype of the same precision as a floating-point dtype."""


def cuda_device(device: int | str | torch.device | None = None) -> torch.device:
    """Return the CUDA device ``cuda(device)`` means: an index, a name, or the current device."""
    if device is None:
        return torch.device("cuda", torch.cuda.current_device())
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def _slot_names(cls: type) -> Iterator[str]:
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                yield name


def _holds_tensors(value: Any) -> bool:
    """Whether ``value`` is, or (through lists, tuples, dicts) holds, a tensor or container."""
    if isinstance(value, torch.Tensor | TensorContainer):
        return True
    if isinstance(value, dict):
        return any(_holds_tensors(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_tensors(v) for v in value)
    return False


class TensorContainer:
    """Base of the classes whose tensors move together (see the module documentation).

    Subclasses keep their own constructors; the conversions build copies without calling them
    (the shapes they checked do not change). ``device`` is the common device of all tensors;
    classes with very many tensors (a sequence) override it with a cheap look at one.
    """

    __slots__ = ()

    _SELECT_AXES: ClassVar[Mapping[str, int]] = {}
    """Field name → the axis ``select`` indexes in every tensor of that field."""

    _SELECT_KEEP: ClassVar[frozenset[str]] = frozenset()
    """Tensor-bearing fields that ``select`` shares unchanged (e.g. a phantom's size)."""

    # -- pickling --------------------------------------------------------------------------

    def __getstate__(self) -> Any:
        """Pickle each tensor with only its own elements, not the storage it views.

        A tensor that views part of a larger storage (the Pulseq import slices every
        repetition's fields out of one tensor per field) would otherwise pickle the whole
        storage, once per view: a 64-line sequence took 9 MB and 0.1 s to pickle. Views are
        copied (tensors that need gradients are left as they are), so what travels to a worker
        process is the object's own data. The state has the standard form (``__dict__``, or
        ``(__dict__ or None, slots)``), so unpickling needs no ``__setstate__``.
        """
        state = getattr(self, "__dict__", None)
        compact = None if state is None else {k: _compact(v) for k, v in state.items()}
        slots = {}
        for name in _slot_names(type(self)):
            try:
                slots[name] = _compact(object.__getattribute__(self, name))
            except AttributeError:  # an unset slot
                continue
        return (compact, slots) if slots else compact

    def __copy__(self: Self) -> Self:
        """Return a shallow copy sharing every attribute (not the pickled state's stand-ins)."""
        return self._copied(lambda value: value)

    def __deepcopy__(self: Self, memo: dict[int, Any]) -> Self:
        """Return a deep copy: ``copy.deepcopy`` of every attribute (tensors keep autograd)."""
        return self._copied(lambda value: copy.deepcopy(value, memo), memo)

    def _copied(self: Self, fn: Callable[[Any], Any], memo: dict[int, Any] | None = None) -> Self:
        cls = type(self)
        new = cls.__new__(cls)
        if memo is not None:
            memo[id(self)] = new
        state = getattr(self, "__dict__", None)
        if state is not None:
            new.__dict__.update({k: fn(v) for k, v in state.items()})
        for name in _slot_names(cls):
            try:
                value = object.__getattribute__(self, name)
            except AttributeError:  # an unset slot
                continue
            object.__setattr__(new, name, fn(value))
        if isinstance(self, list):
            assert isinstance(new, list)
            new.extend(fn(item) for item in self)
        return new

    # -- the walk ---------------------------------------------------------------------------

    def _fields(self) -> Iterator[tuple[str, Any]]:
        """Yield ``(name, value)`` of every instance attribute (``__dict__`` and slots)."""
        state = getattr(self, "__dict__", None)
        if state is not None:
            yield from list(state.items())
        for name in _slot_names(type(self)):
            try:
                yield name, object.__getattribute__(self, name)
            except AttributeError:  # an unset slot
                continue

    def _rebuild(self: Self, values: Mapping[str, Any], items: list[Any] | None = None) -> Self:
        """Return a new object of this class with the attribute ``values`` (and list ``items``)."""
        cls = type(self)
        new = cls.__new__(cls)
        state = getattr(new, "__dict__", None)
        slots = set(_slot_names(cls))
        for name, value in values.items():
            if name in slots:
                object.__setattr__(new, name, value)
            elif state is not None:
                state[name] = value  # (past property and descriptor setters: already checked)
            else:
                raise AttributeError(f"{cls.__name__} has no attribute slot {name!r}")
        if items is not None:
            if not isinstance(new, list):
                raise TypeError(f"{cls.__name__} is not a list; it has no items")
            new.extend(items)
        return new

    def _map_tensors(
        self: Self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        memo: dict[int, Any] | None = None,
    ) -> Self:
        """Return a copy with ``fn`` applied to every tensor (see the module documentation)."""
        memo = {} if memo is None else memo
        if id(self) in memo:
            done: Self = memo[id(self)]
            return done

        def convert(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                key = id(value)
                if key not in memo:
                    memo[key] = fn(value)
                return memo[key]
            if isinstance(value, TensorContainer):
                return value._map_tensors(fn, memo)
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            if isinstance(value, list):
                return [convert(v) for v in value]
            if isinstance(value, tuple) and type(value) is tuple:  # (not NamedTuples)
                return tuple(convert(v) for v in value)
            return value

        values = {name: convert(value) for name, value in self._fields()}
        items = [convert(v) for v in self] if isinstance(self, list) else None
        new = self._rebuild(values, items)
        memo[id(self)] = new
        return new

    # -- devices and dtypes -----------------------------------------------------------------

    def to(
        self: Self,
        device: torch.device | str | int | torch.dtype | None = None,
        dtype: torch.dtype | None = None,
        *,
        non_blocking: bool = False,
    ) -> Self:
        """Return a copy with every tensor on ``device`` and every float tensor in ``dtype``.

        Parameters
        ----------
        device
            Target device (``"cuda"``, ``torch.device("cuda", 1)``, an index, ``"cpu"``); None
            keeps each tensor where it is. A dtype given here is taken as ``dtype``
            (``obj.to(torch.float64)``, as with tensors).
        dtype
            A floating-point dtype: real floating tensors become it, complex ones the complex
            dtype of the same precision (``float64`` → ``complex128``); integer and bool
            tensors keep theirs. None keeps every dtype.
        non_blocking
            Passed to :meth:`torch.Tensor.to`.

        Returns
        -------
        The same class, always a new object; tensors that need no change are shared, other
        attributes are shared too (containers of them are copied).

        Raises
        ------
        TypeError
            For a dtype that is not floating point (the value is named), or a complex tensor
            when ``dtype`` has no complex counterpart (bfloat16).
        """
        if isinstance(device, torch.dtype):
            if dtype is not None:
                raise TypeError(f"to(): dtype given twice ({device} and {dtype})")
            device, dtype = None, device
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"to(): dtype must be a floating-point dtype, got {dtype}")
        target = None if device is None else torch.device(device)
        complex_dtype = None if dtype is None else _COMPLEX_OF.get(dtype)

        def move(t: torch.Tensor) -> torch.Tensor:
            new_dtype = None
            if dtype is not None and t.is_floating_point():
                new_dtype = dtype
            elif dtype is not None and t.is_complex():
                if complex_dtype is None:
                    raise TypeError(f"to(): {dtype} has no complex counterpart for {t.dtype}")
                new_dtype = complex_dtype
            return t.to(device=target, dtype=new_dtype, non_blocking=non_blocking)

        return self._map_tensors(move)

    def cpu(self: Self) -> Self:
        """Return a copy on the CPU (see :meth:`to`)."""
        return self.to("cpu")

    def cuda(self: Self, device: int | str | torch.device | None = None) -> Self:
        """Return a copy on the given CUDA device, default the current one (see :meth:`to`)."""
        return self.to(cuda_device(device))

    def _tensors(self) -> Iterator[torch.Tensor]:
        """Yield every tensor of the object (nested ones included)."""
        stack: list[Any] = [value for _, value in self._fields()]
        if isinstance(self, list):
            stack.extend(self)
        seen: set[int] = set()
        while stack:
            value = stack.pop()
            if isinstance(value, torch.Tensor):
                yield value
            elif isinstance(value, TensorContainer):
                if id(value) not in seen:
                    seen.add(id(value))
                    stack.extend(v for _, v in value._fields())
                    if isinstance(value, list):
                        stack.extend(value)
            elif isinstance(value, dict):
                stack.extend(value.values())
            elif isinstance(value, list | tuple):
                stack.extend(value)

    @property
    def device(self) -> torch.device:
        """The device of the object's tensors (the CPU when it holds none).

        Raises
        ------
        ValueError
            When the tensors are on different devices (the message names them).
        """
        devices = {t.device for t in self._tensors()}
        if len(devices) > 1:
            names = ", ".join(sorted(str(d) for d in devices))
            raise ValueError(f"{type(self).__name__} has tensors on several devices: {names}")
        return devices.pop() if devices else torch.device("cpu")

    # -- selection --------------------------------------------------------------------------

    def _select_length(self) -> int:
        """Return the length of the selection axis."""
        if isinstance(self, list):
            return len(self)
        fields = dict(self._fields())
        for name, axis in self._SELECT_AXES.items():
            for t in _tensor_leaves(fields.get(name)):
                return int(t.shape[axis])
        raise TypeError(f"{type(self).__name__} has no selection axis; select() does not apply")

    def _select_special(self, index: torch.Tensor) -> dict[str, Any]:
        """Fields a subclass selects itself (e.g. samples of readouts); default none."""
        return {}

    def select(self: Self, mask: torch.Tensor | Any) -> Self:
        """Return the entries ``mask`` picks along the selection axis, as a new object.

        Parameters
        ----------
        mask
            ``[n]`` bool mask, or int indices (any order, repeats allowed), over the selection
            axis (see the class: voxels, readouts, repetitions, events).

        Returns
        -------
        The same class. Tensors of the selected fields are indexed (new tensors); fields with
        no selection axis are shared; a list container's items are the same objects.

        Raises
        ------
        IndexError
            A mask of the wrong length, or an index out of range (the values are named).
        TypeError
            The class has no selection axis, or a tensor field names no axis (``_SELECT_AXES``)
            and is not kept (``_SELECT_KEEP``).
        """
        n = self._select_length()
        index = torch.as_tensor(mask)
        if index.dtype == torch.bool:
            if tuple(index.shape) != (n,):
                raise IndexError(f"select(): mask must have shape [{n}], got {tuple(index.shape)}")
            index = torch.nonzero(index).flatten()
        elif index.dtype.is_floating_point or index.dtype.is_complex or index.ndim != 1:
            raise IndexError(
                f"select(): expected a bool mask or 1-D int indices, got {index.dtype} "
                f"{tuple(index.shape)}"
            )
        index = index.to(torch.int64)
        if index.numel() and (int(index.min()) < -n or int(index.max()) >= n):
            raise IndexError(
                f"select(): index {int(index.min())}..{int(index.max())} out of range for {n}"
            )
        index = torch.where(index < 0, index + n, index)
        special = self._select_special(index)
        values: dict[str, Any] = {}
        for name, value in self._fields():
            if name in special:
                values[name] = special[name]
            elif name in self._SELECT_AXES:
                values[name] = _take(value, index, self._SELECT_AXES[name], n, name)
            elif name in self._SELECT_KEEP or not _holds_tensors(value):
                values[name] = value
            else:
                raise TypeError(
                    f"{type(self).__name__}.select(): field {name!r} holds tensors but has no "
                    "selection axis (_SELECT_AXES) and is not kept (_SELECT_KEEP)"
                )
        items = [self[int(i)] for i in index.tolist()] if isinstance(self, list) else None
        return self._rebuild(values, items)


class _PickledAsNumpy:
    """A CPU tensor that pickles as its numpy array and unpickles as a tensor again.

    The array holds the tensor's own elements only, and pickles several times quicker than a
    tensor (microseconds instead of about 0.1 ms each).
    """

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array

    def __reduce__(self) -> tuple[Any, ...]:
        return torch.from_numpy, (self.array,)


_NUMPY_DTYPES = frozenset({
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128,
})  # fmt: skip


def _compact(value: Any) -> Any:
    """``value`` with every tensor that views a larger storage copied (lists, tuples, dicts)."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad or value.is_sparse or value.is_quantized:
            return value
        cpu = value.device.type == "cpu" and value.dtype in _NUMPY_DTYPES
        if cpu and not (value.is_conj() or value.is_neg()):
            return _PickledAsNumpy(value.numpy())
        own = value.numel() * value.element_size()
        if value.untyped_storage().nbytes() > own or not value.is_contiguous():
            return value.clone(memory_format=torch.contiguous_format)
        return value
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()}
    if isinstance(value, list | tuple) and not isinstance(value, TensorContainer):
        items = [_compact(v) for v in value]
        return type(value)(items) if type(value) in (list, tuple) else value
    return value


def _tensor_leaves(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensor_leaves(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _tensor_leaves(v)


def _take(value: Any, index: torch.Tensor, axis: int, n: int, name: str) -> Any:
    """Index every tensor in ``value`` (through dicts, lists, tuples) along ``axis``."""
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 or value.shape[axis] != n:
            raise IndexError(
                f"select(): {name} has shape {tuple(value.shape)}, not {n} along axis {axis}"
            )
        return value.index_select(axis, index.to(value.device))
    if isinstance(value, dict):
        return {k: _take(v, index, axis, n, f"{name}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_take(v, index, axis, n, f"{name}[{i}]") for i, v in enumerate(value))
    return value

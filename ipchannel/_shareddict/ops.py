"""What a SharedDict change is: the operations every replica applies, and the registry that extends them.

A write is an op, ``[name, *args]``. The host applies it to its store and publishes it;
every replica applies the same op, in the same order, to its own copy, so each
operation must be deterministic and must not raise once the host accepted it. An
``Operation`` may have a ``prepare`` step that only the host runs, before it applies and
publishes the op (say, turning a relative timeout into an absolute expiry on the host's
clock): the op every replica applies is the rewritten one.

``register`` is the extension point (``ipchannel.contrib`` adds the Django cache's
operations); ``SharedDict.perform(operation, *args)`` writes one. Every process of a
dict must register the same operations (import the module that does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import ChannelError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MISSING", "PROTOCOL", "Operation", "apply", "check_protocol", "prepare", "register"]

#: The format of requests and published batches; peers must agree (all run the same version).
PROTOCOL = 4
MISSING = object()


class Operation:
    """A write operation of a SharedDict, registered by name in every process (``register``)."""

    __slots__ = ("apply", "name", "prepare")

    def __init__(
        self, name: str, apply: Callable[..., Any], prepare: Callable[[list[Any]], list[Any]] | None
    ) -> None:
        self.name, self.apply, self.prepare = name, apply, prepare

    def __repr__(self) -> str:
        return f"<shared dict operation {self.name!r}>"


_REGISTRY: dict[str, Operation] = {}


def register(
    name: str, apply: Callable[..., Any], prepare: Callable[[list[Any]], list[Any]] | None = None
) -> Operation:
    """Add an operation: ``apply(data, *args)`` changes a replica and returns the write's result.

    ``prepare(op) -> op``, if given, runs in the host only, before the op is applied and
    published. Registering the same function again under its name returns the same operation.

    :raises ValueError: another operation has this name already.
    """
    existing = _REGISTRY.get(name)
    if existing is not None:
        if existing.apply is apply and existing.prepare is prepare:
            return existing
        raise ValueError(f"shared dict operation {name!r} is already registered")
    operation = _REGISTRY[name] = Operation(name, apply, prepare)
    return operation


def apply(data: dict[Any, Any], op: list[Any]) -> Any:
    """Apply one change to ``data`` and return its result (the same in the host and every replica)."""
    try:
        operation = _REGISTRY[op[0]]
    except KeyError:
        raise ValueError(f"unknown shared dict operation {op[0]!r}") from None
    return operation.apply(data, *op[1:])


def prepare(op: list[Any]) -> list[Any] | None:
    """In the host: return ``op`` as its operation's prepare step rewrites it, or None if it has none."""
    operation = _REGISTRY.get(op[0])
    return None if operation is None or operation.prepare is None else operation.prepare(op)


def check_protocol(answer: Any, name: str) -> None:
    """Raise ChannelError unless the host's answer is in our protocol (it runs another version)."""
    if not isinstance(answer, dict) or answer.get("v") != PROTOCOL:
        version = answer.get("v") if isinstance(answer, dict) else None
        raise ChannelError(
            f"shared dict {name!r}: the host speaks shared dict protocol {version!r}, this process"
            f" {PROTOCOL}: every process must run the same ipchannel version"
        )


def _pop(data: dict[Any, Any], key: Any) -> list[Any]:
    value = data.pop(key, MISSING)
    return [False, None] if value is MISSING else [True, value]


def _incr(data: dict[Any, Any], key: Any, amount: float) -> Any:
    data[key] = data.get(key, 0) + amount
    return data[key]


SET = register("set", lambda data, key, value: data.__setitem__(key, value))
DELETE = register("del", lambda data, key: data.pop(key, MISSING) is not MISSING)
POP = register("pop", _pop)
UPDATE = register("update", lambda data, items: data.update((key, value) for key, value in items))
INCR = register("incr", _incr)
SETDEFAULT = register("setdefault", lambda data, key, default: data.setdefault(key, default))
CLEAR = register("clear", lambda data: data.clear())

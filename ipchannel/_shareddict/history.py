"""How the host turns the writes of a batch into changes: once when it serves them, again on replay.

A batch goes through two steps. ``prepare`` (in the host only, before anything is
changed) answers writes applied before (sent again after a failover) and runs each
operation's prepare step; what it keeps is what a durable dict's journal records. ``apply``
then applies those prepared writes in order. Replaying a journal runs ``apply`` on the
same prepared writes, so it reaches the same state, sequence numbers and results the host
answered with: operations are deterministic (``ops``).
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import RemoteError
from . import ops

__all__ = ["Prepared", "apply", "prepare"]


class Prepared:
    """One write as the host applies it, and where its outcome goes in the answer."""

    __slots__ = ("client", "number", "op", "rewritten", "slot")

    def __init__(
        self, slot: tuple[int, int], op: list[Any], client: str, number: int, rewritten: bool
    ) -> None:
        self.slot, self.op, self.client, self.number, self.rewritten = slot, op, client, number, rewritten

    def record(self) -> list[Any]:
        """Return the write as a journal keeps it: ``[op, client, number]``."""
        return [self.op, self.client, self.number]


def _error(exc: BaseException) -> list[Any]:
    return ["err", json.loads(RemoteError.encode(exc))]


def prepare(
    requests: list[list[list[Any]]], applied: dict[str, list[Any]]
) -> tuple[list[Prepared], list[list[list[Any] | None]]]:
    """Prepare each request's writes; return them and the outcomes known already (None: to apply).

    ``["dup", result]`` for a write applied before (maybe in an earlier term; ``None`` as
    result if its writer gave up on it since), ``["err", info]`` for one its operation
    refused (nothing changes).
    """
    prepared: list[Prepared] = []
    outcomes: list[list[list[Any] | None]] = []
    for index, writes in enumerate(requests):
        answers: list[list[Any] | None] = []
        for position, write in enumerate(writes):
            answers.append(None)
            try:
                op, client, number = write
                last = applied.get(client)
                if last is not None and number <= last[0]:
                    answers[-1] = ["dup", last[1] if number == last[0] else None]
                    continue
                rewritten = ops.prepare(op)  # stamped here, once: every replica applies the op as rewritten
            except Exception as exc:  # noqa: BLE001 - the writer gets it as RemoteError; the batch goes on
                answers[-1] = _error(exc)
                continue
            if rewritten is not None:
                op = rewritten
            prepared.append(Prepared((index, position), op, client, number, rewritten is not None))
        outcomes.append(answers)
    return prepared, outcomes


def apply(
    data: dict[Any, Any], applied: dict[str, list[Any]], seq: int, write: list[Any]
) -> tuple[int, list[Any]]:
    """Apply one prepared write ``[op, client, number]``; return the new sequence and its outcome.

    ``["ok", result, seq]``, ``["dup", result]`` (the same write earlier in this batch) or
    ``["err", info]`` (the operation raised; nothing changed).
    """
    op, client, number = write
    last = applied.get(client)
    if last is not None and number <= last[0]:
        return seq, ["dup", last[1] if number == last[0] else None]
    try:
        result = ops.apply(data, op)
    except Exception as exc:  # noqa: BLE001 - the writer gets it as RemoteError; the batch goes on
        return seq, _error(exc)
    seq += 1
    applied[client] = [number, result, seq]
    return seq, ["ok", result, seq]

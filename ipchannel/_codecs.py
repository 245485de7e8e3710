"""Codecs turn request-layer messages into bytes and back: "json", "pickle", or your own.

Pickle runs code on ``loads``: with ``codec="pickle"`` every process that can
connect to the channel can run code in every other. The runtime directory is
private to your user, so that is "every process of yours", but know it.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol

__all__ = ["Codec", "resolve_codec"]


class Codec(Protocol):
    """What a codec needs: ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj``."""

    def dumps(self, obj: Any, /) -> bytes: ...

    def loads(self, data: bytes, /) -> Any: ...


class _Json:
    """Compact UTF-8 JSON; one encoder and decoder made up front, as ``json.dumps`` would per call."""

    name = "json"
    _encode = json.JSONEncoder(separators=(",", ":")).encode
    _decode = json.JSONDecoder().decode

    def dumps(self, obj: Any) -> bytes:
        return self._encode(obj).encode()

    def loads(self, data: bytes) -> Any:
        return self._decode(str(data, "utf-8"))


class _Pickle:
    name = "pickle"

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> Any:
        return pickle.loads(data)  # noqa: S301 - documented: pickle trusts every peer


_BUILTIN: dict[str, Codec] = {"json": _Json(), "pickle": _Pickle()}


def resolve_codec(codec: object) -> Codec:
    """Return the codec named ``codec``, or ``codec`` itself if it has callable ``dumps`` and ``loads``."""
    if isinstance(codec, str):
        try:
            return _BUILTIN[codec]
        except KeyError:
            raise ValueError(
                f"unknown codec {codec!r}: use 'json', 'pickle', or an object with dumps() and loads()"
            ) from None
    if callable(getattr(codec, "dumps", None)) and callable(getattr(codec, "loads", None)):
        return codec  # type: ignore[return-value]
    raise TypeError(
        f"codec must be 'json', 'pickle', or an object with dumps() and loads(), not {type(codec).__name__}"
    )

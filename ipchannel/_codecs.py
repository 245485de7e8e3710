"""Codecs turn request-layer messages into bytes and back: "json", "pickle", or your own.

Pickle runs code on ``loads``: with ``codec="pickle"`` every process that can
connect to the channel can run code in every other. The runtime directory is
private to your user, so that is "every process of yours", but know it.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol

__all__ = ["Codec", "is_builtin", "resolve_codec"]


class Codec(Protocol):
    """What a codec needs: ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj``."""

    def dumps(self, obj: Any, /) -> bytes: ...

    def loads(self, data: bytes, /) -> Any: ...


class _Json:
    """Compact UTF-8 JSON; one encoder and decoder made up front, as ``json.dumps`` would per call."""

    name = "json"
    _encode = json.JSONEncoder(separators=(",", ":")).encode
    _decode = json.JSONDecoder().decode
    #: What a SharedDict key may be: these come back as themselves (a key travels inside a list).
    KEY_TYPES = "str, int, float, bool or None"

    def dumps(self, obj: Any) -> bytes:
        return self._encode(obj).encode()

    def loads(self, data: bytes) -> Any:
        return self._decode(str(data, "utf-8"))

    def check_key(self, key: Any) -> None:
        """Raise TypeError unless ``key`` comes back from JSON as an equal, hashable key."""
        if key is not None and not isinstance(key, (str, int, float)):
            raise TypeError(
                f"a shared dict key must be {self.KEY_TYPES} with the json codec, not "
                f"{type(key).__name__} ({key!r}); use codec='pickle' for other hashable keys"
            )

    def check_value(self, value: Any) -> None:
        """Raise TypeError if JSON would hand ``value`` back changed (a tuple as list, an int key as str)."""
        problem = _json_change(value)
        if problem:
            raise TypeError(
                f"the json codec would change this value in every other process ({problem}); convert it "
                "first (a list for a tuple, str keys in dicts), or use codec='pickle'"
            )


def _json_change(value: Any, depth: int = 0) -> str:
    """Say how JSON would change ``value`` on its way ("" if it comes back equal)."""
    if type(value) in _JSON_SCALARS or depth > _JSON_DEPTH:
        return ""  # too deep: the encoder itself refuses it, with its own error
    if isinstance(value, tuple):
        return "a tuple would become a list"
    if isinstance(value, list):
        return next((found for item in value if (found := _json_change(item, depth + 1))), "")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"the {type(key).__name__} key {key!r} would become a str"
            if found := _json_change(item, depth + 1):
                return found
    return ""  # equal when it comes back, or not JSON at all (dumps() refuses it with its own error)


_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})
_JSON_DEPTH = 100


class _Pickle:
    name = "pickle"

    @staticmethod
    def check_key(key: Any) -> None:
        """Raise TypeError unless ``key`` is hashable (pickle brings back an equal copy)."""
        try:
            hash(key)
        except TypeError:
            raise TypeError(
                f"a shared dict key must be hashable, not {type(key).__name__} ({key!r})"
            ) from None

    @staticmethod
    def check_value(value: Any) -> None:
        """Nothing to check: pickle brings back an equal copy, or refuses in dumps()."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> Any:
        return pickle.loads(data)  # noqa: S301 - documented: pickle trusts every peer


_BUILTIN: dict[str, Codec] = {"json": _Json(), "pickle": _Pickle()}


def is_builtin(codec: Codec) -> bool:
    """Tell whether ``codec`` is "json" or "pickle" (they bring back what they carried, or refuse)."""
    return any(codec is builtin for builtin in _BUILTIN.values())


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

"""The error a contrib module raises when the library it integrates is not installed."""

from __future__ import annotations

__all__ = ["missing"]


def missing(module: str, library: str, extra: str) -> ImportError:
    """Return the ImportError of ``module`` without ``library``: it names the pip line of ``extra``."""
    return ImportError(
        f"{module} needs {library}, which is not installed; install it with: pip install 'ipchannel[{extra}]'"
    )

"""Settings for the django_commands example: just enough for management commands."""

from __future__ import annotations

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only-not-secret"  # noqa: S105 - an example with no secrets to keep
DEBUG = False
INSTALLED_APPS = ["items"]
DATABASES: dict[str, dict[str, str]] = {}  # the example needs no database
USE_TZ = True

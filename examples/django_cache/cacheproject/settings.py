"""Settings for the django_cache example: one cache, shared by every gunicorn worker."""

from __future__ import annotations

SECRET_KEY = "example-only-not-secret"  # noqa: S105 - an example with no secrets to keep
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "cacheproject.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}  # the example needs no database
USE_TZ = True

CACHES = {
    "default": {
        "BACKEND": "ipchannel.contrib.django.SharedDictCache",
        "LOCATION": "django-cache-example",  # the channel name: one cache per name, per user
        "TIMEOUT": 300,
        "OPTIONS": {"MAX_ENTRIES": 10_000},
    }
}

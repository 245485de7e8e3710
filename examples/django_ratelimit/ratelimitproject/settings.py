"""Settings for the django_ratelimit example: django-ratelimit counts in a cache every worker shares."""

from __future__ import annotations

SECRET_KEY = "example-only-not-secret"  # noqa: S105 - an example with no secrets to keep
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "ratelimitproject.urls"
INSTALLED_APPS = ["django_ratelimit"]  # its system checks
DATABASES: dict[str, dict[str, str]] = {}  # the example needs no database
USE_TZ = True

CACHES = {
    "default": {  # django-ratelimit's cache (RATELIMIT_USE_CACHE, "default" by default)
        "BACKEND": "ipchannel.contrib.django.SharedDictCache",
        "LOCATION": "django-ratelimit-example",  # the channel name: one cache per name, per user
        "OPTIONS": {"MAX_ENTRIES": 10_000},  # one entry per client and window: room for them
    }
}

# django-ratelimit warns (W001) for every backend it does not list, Django's own RedisCache too;
# this one's incr is atomic across workers and keeps the entry's expiry (docs/howto/django.rst).
SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]

# gunicorn listens on a Unix socket behind a proxy, so REMOTE_ADDR is empty: the client's address is
# the header the proxy sets (nginx: proxy_set_header X-Real-IP $remote_addr).
RATELIMIT_IP_META_KEY = "HTTP_X_REAL_IP"

# A limited request answers 429 Too Many Requests (django-ratelimit's default is 403: it raises
# PermissionDenied); the middleware turns its exception into RATELIMIT_VIEW's answer.
MIDDLEWARE = ["django_ratelimit.middleware.RatelimitMiddleware"]
RATELIMIT_VIEW = "ratelimitproject.urls.limited"

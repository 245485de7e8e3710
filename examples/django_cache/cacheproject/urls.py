"""Views over the shared cache: set a value in one worker, read it in any other; a shared counter.

curl --unix-socket /tmp/django-cache.sock 'http://localhost/set?key=greeting&value=hello'
curl --unix-socket /tmp/django-cache.sock 'http://localhost/get?key=greeting'
curl --unix-socket /tmp/django-cache.sock 'http://localhost/incr?key=hits'
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from django.core.cache import cache
from django.http import JsonResponse
from django.urls import path

if TYPE_CHECKING:
    from django.http import HttpRequest


def _reply(**body: Any) -> JsonResponse:
    """Answer with ``body`` plus who answered (this worker) and who hosts the cache."""
    shared = cache.shared  # the SharedDict under the cache; its .channel knows who hosts
    return JsonResponse({**body, "worker": os.getpid(), "host": shared.channel.host_pid})


def set_value(request: HttpRequest) -> JsonResponse:
    """Set ``key`` to ``value``: it returns once the host has it (and this worker's replica)."""
    cache.set(request.GET["key"], request.GET["value"], timeout=None)
    return _reply(ok=True)


def get_value(request: HttpRequest) -> JsonResponse:
    """Read ``key`` from this worker's replica: no socket, no lock."""
    return _reply(value=cache.get(request.GET["key"]))


def incr(request: HttpRequest) -> JsonResponse:
    """Increment ``key`` atomically across workers (created at 0 the first time)."""
    cache.add(request.GET["key"], 0, timeout=None)
    return _reply(value=cache.incr(request.GET["key"]))


urlpatterns = [path("set", set_value), path("get", get_value), path("incr", incr)]

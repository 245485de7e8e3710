"""One view limited to 5 requests a minute per client address, whichever worker serves them.

curl --unix-socket /tmp/django-ratelimit.sock -H 'X-Real-IP: 203.0.113.7' http://localhost/hello
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from django.core.cache import cache
from django.http import JsonResponse
from django.urls import path
from django_ratelimit.decorators import ratelimit

if TYPE_CHECKING:
    from django.http import HttpRequest


def _reply(status: int, **body: Any) -> JsonResponse:
    """Answer with ``body`` plus who answered (this worker) and who hosts the cache."""
    host = cache.shared.channel.host_pid  # the SharedDict under the cache; its .channel knows who hosts
    return JsonResponse({**body, "worker": os.getpid(), "host": host}, status=status)


@ratelimit(key="ip", rate="5/m", block=True)  # type: ignore[untyped-decorator] # django-ratelimit is untyped
def hello(request: HttpRequest) -> JsonResponse:
    """Answer the first 5 requests of a client in each minute; the others get ``limited``'s 429."""
    del request
    return _reply(200, hello="world")


def limited(request: HttpRequest, exception: Exception) -> JsonResponse:
    """RATELIMIT_VIEW: what a request over the limit gets."""
    del request, exception
    return _reply(429, error="too many requests")


urlpatterns = [path("hello", hello)]

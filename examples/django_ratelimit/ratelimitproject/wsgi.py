"""The WSGI application gunicorn serves: ``gunicorn -c gunicorn.conf.py ratelimitproject.wsgi``."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ratelimitproject.settings")
application = get_wsgi_application()

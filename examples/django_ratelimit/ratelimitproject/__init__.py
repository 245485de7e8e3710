"""The django_ratelimit example project: settings, the rate-limited view and the WSGI application."""

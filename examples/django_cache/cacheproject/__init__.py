"""The django_cache example project: settings, views and the WSGI application."""

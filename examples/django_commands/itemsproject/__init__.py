"""The example Django project: settings only."""

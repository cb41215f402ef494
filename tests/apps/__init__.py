"""Celery apps that the rig's worker processes load (``-A tests.apps.<name>``)."""

"""The Celery layer: the task class, the decorator, the attempt drivers and the wiring."""

"""The Celery apps the benchmarks measure, each importable on its own by a worker.

- :mod:`benchmarks.apps.plain`: plain Celery, as a careful user writes it
  (``autoretry_for``, ``retry_backoff``, ``retry_jitter``, ``max_retries=8``,
  ``rate_limit``); it never imports ``celery_resilience``.
- :mod:`benchmarks.apps.resilient`: the same tasks made resilient.

Both read their Redis URLs from the environment (:mod:`benchmarks.apps.config`).
"""

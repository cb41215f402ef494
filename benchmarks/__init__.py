"""Benchmarks of celery-resilience against plain Celery (not part of the test suite).

``python3 dev.py bench`` runs every scenario and writes ``benchmarks/RESULTS.md``;
``--quick`` and ``--only`` make smaller runs for development; ``profile`` samples the
per-attempt path with py-spy. See ``benchmarks/README.md``.
"""

"""Reading Prometheus samples in tests: one registry's, by metric name and labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

#: (sample name, sorted labels) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(registry: CollectorRegistry) -> Samples:
    """Every sample of ``registry`` (the ``_created`` timestamps left out)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def value(found: Samples, metric: str, **labels: str) -> float:
    """The value of ``metric`` with exactly ``labels`` (0 when absent)."""
    return found.get((metric, tuple(sorted(labels.items()))), 0.0)

"""What operators see: traces, log context and redaction, metrics, spans, counters."""

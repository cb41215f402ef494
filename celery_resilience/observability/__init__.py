"""What operators see: traces, log context, metrics, spans, signals and inspection."""

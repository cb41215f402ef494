"""The example project's own tests: its tasks' decisions, run eagerly with the pytest plugin."""

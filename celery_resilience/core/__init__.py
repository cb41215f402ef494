"""The core: values and decisions, with no Celery, no Redis and no I/O.

Policies, options, classification, backoff, the attempt ledger and the decision of what
happens after each attempt live here; the layers above carry the decisions out.
"""

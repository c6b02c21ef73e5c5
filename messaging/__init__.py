"""Messaging over Redis, shared by the API and the workers: how a REDIS_URL (Sentinel
included) becomes a client or a broker URL (`redis_url`), the Celery app factory and its
queues (`celery_factory`), sending jobs to a queue (`queues`), the live channel of job
events and cancel flags (`live_events`), and the reconciler that re-queues what Redis lost
(`reconcile`).

Imports no torch, FastAPI or worker code, so both sides can use it. The database (`store`)
stays the source of truth; what travels here is only messages.
"""

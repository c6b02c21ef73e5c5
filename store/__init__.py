"""Shared persistence for the service and the worker: the database (models, migrations,
job repository, API keys), the artifact store, and the Redis broker and event channel.

Imports no torch, FastAPI or worker code, so both sides can use it.
"""

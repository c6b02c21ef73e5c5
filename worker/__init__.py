"""The Celery worker: `celery -A worker.celery_app worker -Q cpu --concurrency 1`.

Imports torch only inside training processes; see worker.runner for what a job does.
"""

"""The HTTP API of the MLP training service (FastAPI): `service.app:create_app`."""

"""The HTTP API under ``/api/v1``: routers per resource, schemas, auth dependencies, errors."""

"""The HTTP API's wire format: pydantic request and response models (Cyberun field names)."""

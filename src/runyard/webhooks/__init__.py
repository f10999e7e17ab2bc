"""Webhook delivery: the outbox deliverer, URL safety checks, secrets at rest."""

"""Webhook delivery: the outbox deliverer and URL safety checks.

(Secrets at rest are in ``security/secrets.py``.)
"""

"""Dispatch of tasks to agents: the waiting-task index, claims, leases, retries, timeouts."""

"""The engine: dispatch, attempts, leases, retries — on a storage port (see README.md)."""

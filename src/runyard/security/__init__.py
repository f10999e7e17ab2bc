"""Password hashing and session tokens. Pure computation, no storage."""

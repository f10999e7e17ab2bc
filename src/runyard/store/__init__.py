"""Persistence: the only package that writes SQL. Runs on SQLite and PostgreSQL alike."""

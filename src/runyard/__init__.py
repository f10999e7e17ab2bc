"""Runyard: run GPU work on machines you own."""

__version__ = "0.1.0"

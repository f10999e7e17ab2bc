"""Offset pagination as the API exposes it: 1-based pages of ``per_page`` items."""

from __future__ import annotations

from runyard.domain.limits import PER_PAGE, PER_PAGE_DEFAULT


class Page:
    """Offset pagination as the API exposes it (1-based pages)."""

    def __init__(self, current_page: int = 1, per_page: int = PER_PAGE_DEFAULT) -> None:
        self.current_page = current_page
        self.per_page = per_page

    @property
    def offset(self) -> int:
        return (self.current_page - 1) * self.per_page


def first_page() -> Page:
    """The first page at the largest ``per_page`` a list route allows (the dashboard's lists)."""
    return Page(1, PER_PAGE.high)

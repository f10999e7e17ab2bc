from __future__ import annotations

import pytest

from runyard.domain.roles import Permission, Role, allows


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.VIEWER, {Permission.READ}),
        (Role.MEMBER, {Permission.READ, Permission.RUN}),
        (Role.ADMIN, set(Permission) - {Permission.OWN_TEAM}),
        (Role.OWNER, set(Permission)),
    ],
)
def test_each_role_holds_exactly_its_permissions(role: Role, allowed: set[Permission]) -> None:
    assert {p for p in Permission if allows(role, p)} == allowed

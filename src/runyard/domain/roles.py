"""Team roles and what each may do. One table, checked on every route."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


class Permission(StrEnum):
    #: Read team resources: team, members, workflows, tasks, agents.
    READ = "read"
    #: Submit, cancel and upload inputs for work.
    RUN = "run"
    #: Create, change and delete workflows and other team resources.
    MANAGE_RESOURCES = "manage_resources"
    #: Invite, remove and change the role of members.
    MANAGE_MEMBERS = "manage_members"
    #: Create, list and revoke integration and agent keys.
    MANAGE_CREDENTIALS = "manage_credentials"
    #: Create and change webhooks.
    MANAGE_WEBHOOKS = "manage_webhooks"
    #: Rename the team.
    MANAGE_TEAM = "manage_team"
    #: Transfer ownership and delete the team.
    OWN_TEAM = "own_team"


#: The least role that holds each permission; every higher role holds it too.
MINIMUM_ROLE: dict[Permission, Role] = {
    Permission.READ: Role.VIEWER,
    Permission.RUN: Role.MEMBER,
    Permission.MANAGE_RESOURCES: Role.ADMIN,
    Permission.MANAGE_MEMBERS: Role.ADMIN,
    Permission.MANAGE_CREDENTIALS: Role.ADMIN,
    Permission.MANAGE_WEBHOOKS: Role.ADMIN,
    Permission.MANAGE_TEAM: Role.ADMIN,
    Permission.OWN_TEAM: Role.OWNER,
}

#: Roles an admin or owner may hand out with an invitation or a role change.
ASSIGNABLE_ROLES = frozenset({Role.ADMIN, Role.MEMBER, Role.VIEWER})


def allows(role: Role, permission: Permission) -> bool:
    return role.rank >= MINIMUM_ROLE[permission].rank

"""Queries for identity and tenancy. Services call these inside one ``Database`` transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

# Re-exported: queries take a ``Page``; it is a domain value the wire schemas use too.
from runyard.domain.pages import Page as Page
from runyard.store.tables import (
    AuthThrottle,
    Credential,
    DevicePairing,
    Gateway,
    InstanceSetting,
    Invitation,
    Membership,
    RefreshToken,
    Team,
    User,
    Webhook,
)


class Repos:
    """All identity queries, bound to one session (one transaction)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # -- instance settings -------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        row = await self.session.get(InstanceSetting, key)
        return row.value if row else None

    async def put_setting_if_absent(self, key: str, value: str) -> str:
        existing = await self.get_setting(key)
        if existing is not None:
            return existing
        self.session.add(InstanceSetting(key=key, value=value))
        await self.session.flush()
        return value

    async def put_setting(self, key: str, value: str) -> None:
        row = await self.session.get(InstanceSetting, key)
        if row is None:
            self.session.add(InstanceSetting(key=key, value=value))
        else:
            row.value = value
        await self.session.flush()

    async def lock_instance(self, lock_key: int) -> None:
        """Hold an instance-wide lock for the rest of this write transaction (PostgreSQL: an
        advisory lock; SQLite's ``BEGIN IMMEDIATE`` already excludes every other writer)."""
        if self.session.get_bind().dialect.name != "sqlite":
            await self.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key})

    async def gateway_seen_since(self, since: datetime) -> str | None:
        """A server (gateway) of this database heard from since ``since``, if any."""
        return await self.session.scalar(
            select(Gateway.gateway_id).where(Gateway.last_seen_at >= since).limit(1)
        )

    async def all_webhooks(self) -> Sequence[Webhook]:
        return (await self.session.scalars(select(Webhook))).all()

    # -- users ---------------------------------------------------------------------------

    async def user_by_id(self, user_id: str) -> User | None:
        return await self.session.get(User, user_id)

    async def user_by_email(self, email: str) -> User | None:
        result = await self.session.execute(select(User).where(User.email_address == email))
        return result.scalar_one_or_none()

    async def add(self, row: object) -> None:
        self.session.add(row)
        await self.session.flush()

    # -- teams and memberships ---------------------------------------------------------

    async def team_by_id(self, team_id: str) -> Team | None:
        return await self.session.get(Team, team_id)

    async def membership(self, team_id: str, user_id: str) -> Membership | None:
        return await self.session.get(Membership, (team_id, user_id))

    async def teams_of_user(
        self, user_id: str, page: Page | None = None
    ) -> tuple[list[tuple[Team, Membership]], int]:
        base = (
            select(Team, Membership)
            .join(Membership, Membership.team_id == Team.id)
            .where(Membership.user_id == user_id)
        )
        total = await self._count(base)
        query = base.order_by(Team.created_at, Team.id)
        if page:
            query = query.offset(page.offset).limit(page.per_page)
        rows = (await self.session.execute(query)).all()
        return [(team, member) for team, member in rows], total

    async def members_of_team(
        self, team_id: str, page: Page
    ) -> tuple[list[tuple[Membership, User]], int]:
        base = (
            select(Membership, User)
            .join(User, User.id == Membership.user_id)
            .where(Membership.team_id == team_id)
        )
        total = await self._count(base)
        rows = (
            await self.session.execute(
                base.order_by(Membership.created_at, User.id)
                .offset(page.offset)
                .limit(page.per_page)
            )
        ).all()
        return [(m, u) for m, u in rows], total

    async def member_count(self, team_id: str) -> int:
        query = select(func.count()).where(Membership.team_id == team_id)
        return int((await self.session.execute(query)).scalar_one())

    async def delete_membership(self, team_id: str, user_id: str) -> None:
        await self.session.execute(
            delete(Membership).where(Membership.team_id == team_id, Membership.user_id == user_id)
        )

    async def delete_team(self, team_id: str) -> None:
        await self.session.execute(delete(Team).where(Team.id == team_id))

    # -- invitations ---------------------------------------------------------------------

    async def invitation(self, team_id: str, invitation_id: str) -> Invitation | None:
        row = await self.session.get(Invitation, invitation_id)
        return row if row is not None and row.team_id == team_id else None

    async def invitation_for_email(self, team_id: str, email: str) -> Invitation | None:
        result = await self.session.execute(
            select(Invitation).where(
                Invitation.team_id == team_id, Invitation.email_address == email
            )
        )
        return result.scalar_one_or_none()

    async def invitation_by_token_hash(self, token_hash: str) -> Invitation | None:
        result = await self.session.execute(
            select(Invitation).where(Invitation.token_hash == token_hash)
        )
        return result.scalar_one_or_none()

    async def invitations_of_team(
        self, team_id: str, now: datetime, page: Page
    ) -> tuple[Sequence[Invitation], int]:
        base = select(Invitation).where(Invitation.team_id == team_id, Invitation.expires_at > now)
        total = await self._count(base)
        rows = (
            (
                await self.session.execute(
                    base.order_by(Invitation.created_at.desc(), Invitation.id.desc())
                    .offset(page.offset)
                    .limit(page.per_page)
                )
            )
            .scalars()
            .all()
        )
        return rows, total

    async def delete_invitation(self, invitation_id: str) -> None:
        await self.session.execute(delete(Invitation).where(Invitation.id == invitation_id))

    # -- credentials ---------------------------------------------------------------------

    async def credential_by_hash(self, key_hash: str) -> Credential | None:
        result = await self.session.execute(
            select(Credential).where(Credential.key_hash == key_hash)
        )
        return result.scalar_one_or_none()

    async def credential(self, team_id: str, credential_id: str) -> Credential | None:
        row = await self.session.get(Credential, credential_id)
        return row if row is not None and row.team_id == team_id else None

    async def credentials_of_team(
        self, team_id: str, kind: str | None, page: Page
    ) -> tuple[Sequence[Credential], int]:
        base = select(Credential).where(Credential.team_id == team_id)
        if kind:
            base = base.where(Credential.kind == kind)
        total = await self._count(base)
        rows = (
            (
                await self.session.execute(
                    base.order_by(Credential.created_at.desc(), Credential.id.desc())
                    .offset(page.offset)
                    .limit(page.per_page)
                )
            )
            .scalars()
            .all()
        )
        return rows, total

    async def revoke_credentials(self, ids: Sequence[str], now: datetime) -> None:
        await self.session.execute(
            update(Credential)
            .where(Credential.id.in_(ids), Credential.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def revoke_team_credentials(self, team_id: str, now: datetime) -> None:
        await self.session.execute(
            update(Credential)
            .where(Credential.team_id == team_id, Credential.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def companions_of(self, credential_id: str) -> Sequence[str]:
        result = await self.session.execute(
            select(Credential.id).where(Credential.companion_of == credential_id)
        )
        return result.scalars().all()

    async def touch_credential(self, credential_id: str, now: datetime) -> None:
        await self.session.execute(
            update(Credential).where(Credential.id == credential_id).values(last_used_at=now)
        )

    # -- refresh tokens -------------------------------------------------------------------

    async def refresh_token(self, token_id: str) -> RefreshToken | None:
        return await self.session.get(RefreshToken, token_id)

    async def mark_refresh_used(self, token_id: str, now: datetime) -> bool:
        """Mark a refresh token used; False if someone else used or revoked it first."""
        result = await self.session.execute(
            update(RefreshToken)
            .where(
                RefreshToken.id == token_id,
                RefreshToken.used_at.is_(None),
                RefreshToken.revoked_at.is_(None),
            )
            .values(used_at=now)
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def revoke_refresh_family(self, family_id: str, now: datetime) -> None:
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def delete_expired_refresh_tokens(self, now: datetime) -> None:
        await self.session.execute(delete(RefreshToken).where(RefreshToken.expires_at < now))

    async def session_alive(self, family_id: str, user_id: str) -> bool:
        """Whether the sign-in ``family_id`` of ``user_id`` still stands: it has refresh
        tokens and none of them was revoked (revocation marks the whole family, so one revoked
        row is enough: a token rotated in by a refresh racing the revocation stays dead)."""
        result = await self.session.execute(
            select(func.count(), func.count(RefreshToken.revoked_at)).where(
                RefreshToken.family_id == family_id, RefreshToken.user_id == user_id
            )
        )
        total, revoked = result.one()
        return bool(total) and not revoked

    async def family_revoked(self, family_id: str) -> bool:
        result = await self.session.execute(
            select(RefreshToken.id)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_not(None))
            .limit(1)
        )
        return result.first() is not None

    async def revoke_user_sessions(
        self, user_id: str, now: datetime, keep_family: str | None = None
    ) -> None:
        """Revoke every sign-in of a user (but ``keep_family``)."""
        query = update(RefreshToken).where(
            RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None)
        )
        if keep_family is not None:
            query = query.where(RefreshToken.family_id != keep_family)
        await self.session.execute(query.values(revoked_at=now))

    # -- throttles -------------------------------------------------------------------------

    async def throttles(self, keys: Sequence[str]) -> dict[str, AuthThrottle]:
        result = await self.session.execute(select(AuthThrottle).where(AuthThrottle.key.in_(keys)))
        return {row.key: row for row in result.scalars()}

    async def lock_throttles(self, keys: Sequence[str], now: datetime) -> dict[str, AuthThrottle]:
        """The rows of ``keys``, created when missing and locked for this transaction (other
        replicas counting the same keys wait), in key order so two writers never deadlock."""
        ordered = sorted(set(keys))
        values = [
            {
                "key": key,
                "window_start": now,
                "attempts": 0,
                "previous_attempts": 0,
                "strikes": 0,
                "updated_at": now,
            }
            for key in ordered
        ]
        dialect = self.session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        await self.session.execute(insert(AuthThrottle).values(values).on_conflict_do_nothing())
        result = await self.session.execute(
            select(AuthThrottle)
            .where(AuthThrottle.key.in_(ordered))
            .order_by(AuthThrottle.key)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return {row.key: row for row in result.scalars()}

    async def delete_stale_throttles(self, idle_before: datetime, known_before: datetime) -> None:
        """Forget keys idle since ``idle_before`` that hold no recent success either."""
        await self.session.execute(
            delete(AuthThrottle).where(
                AuthThrottle.updated_at < idle_before,
                (AuthThrottle.succeeded_at.is_(None)) | (AuthThrottle.succeeded_at < known_before),
            )
        )

    # -- device pairings -----------------------------------------------------------------

    async def pairing_by_device_hash(self, device_code_hash: str) -> DevicePairing | None:
        result = await self.session.execute(
            select(DevicePairing).where(DevicePairing.device_code_hash == device_code_hash)
        )
        return result.scalar_one_or_none()

    async def pairing_by_user_code(self, user_code: str) -> DevicePairing | None:
        result = await self.session.execute(
            select(DevicePairing).where(DevicePairing.user_code == user_code)
        )
        return result.scalar_one_or_none()

    async def delete_pairing(self, pairing_id: str) -> bool:
        result = await self.session.execute(
            delete(DevicePairing).where(DevicePairing.id == pairing_id)
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def delete_expired_pairings(self, now: datetime) -> None:
        await self.session.execute(delete(DevicePairing).where(DevicePairing.expires_at < now))

    # -- helpers -------------------------------------------------------------------------

    async def _count(self, query: object) -> int:
        from sqlalchemy import Select

        assert isinstance(query, Select)
        counted = select(func.count()).select_from(query.order_by(None).subquery())
        return int((await self.session.execute(counted)).scalar_one())

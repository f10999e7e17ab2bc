"""Access: integration and agent keys, members (roles) and invitations, webhooks, their
delivery log, redelivery, ping and secret rotation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from runyard.domain.credentials import CredentialKind
from runyard.domain.errors import Forbidden, RunyardError
from runyard.domain.pages import first_page
from runyard.domain.roles import ASSIGNABLE_ROLES, Permission, Role
from runyard.services import credentials, teams, webhooks
from runyard.web.render import PageRoute, page, redirect
from runyard.web.session import Viewer, posted_form, resource_id, viewer

router = APIRouter(route_class=PageRoute, include_in_schema=False)

KEY_KINDS = {"integration": CredentialKind.INTEGRATION, "agent": CredentialKind.AGENT}
WEBHOOK_EVENTS = ("task.completed", "task.failed", "task.cancelled")
#: Messages after a redirect, by code (the query names a code, never the text).
NOTICES = {
    "key-revoked": "Key revoked.",
    "invitation-cancelled": "Invitation revoked.",
    "member-removed": "Member removed.",
    "role-changed": "Role changed.",
    "webhook-deleted": "Webhook deleted.",
}
#: Notices of a webhook's page.
WEBHOOK_NOTICES = {
    "ping-queued": "Ping queued: it appears in the log below once sent (reload to see it).",
    "redelivery-queued": "Delivery queued again: it is sent now, with a fresh retry schedule.",
}


async def _access_page(
    who: Viewer, *, status: int = 200, notice: str | None = None, **extra: Any
) -> Response:
    values: dict[str, Any] = {"keys": None, "members": [], "invitations": [], "hooks": None}
    now = who.ctx.now()
    if who.can(Permission.MANAGE_CREDENTIALS):
        rows, _ = await credentials.list_credentials(who.ctx, who.scope, None, first_page())
        values["keys"] = [
            {"row": r, "status": credentials.key_status(r, now)}
            for r in rows
            if r.kind in ("integration", "agent", "device")
        ]
    values["members"], _ = await teams.list_members(who.ctx, who.scope, first_page())
    values["invitations"], _ = await teams.list_invitations(who.ctx, who.scope, first_page())
    if who.can(Permission.MANAGE_WEBHOOKS):
        values["hooks"], _ = await webhooks.list_webhooks(who.ctx, who.scope, first_page())
    return page(
        "access.html",
        who,
        status=status,
        nav="access",
        notice=notice,
        roles=[r.value for r in sorted(ASSIGNABLE_ROLES, key=lambda r: -r.rank)],
        events=WEBHOOK_EVENTS,
        errors=extra.pop("errors", {}),
        form=extra.pop("form", {}),
        form_for=extra.pop("form_for", ""),
        **values,
        **extra,
        title="Access",
    )


@router.get("/access")
async def access(request: Request, notice: Annotated[str, Query(max_length=40)] = "") -> Response:
    who = await viewer(request)
    return await _access_page(who, notice=NOTICES.get(notice))


@router.post("/access/keys")
async def create_key(request: Request) -> Response:
    who = await viewer(request)
    form = await posted_form(request, who)
    kind = KEY_KINDS.get(form.get("kind", ""))
    name = form.get("display_name", "").strip()
    errors: dict[str, str] = {}
    if kind is None:
        errors["key_kind"] = "choose an integration (sk-) or agent (ak-) key"
    if not 1 <= len(name) <= 100:
        errors["key_name"] = "give the key a name (1-100 characters)"
    days_raw = form.get("expires_in_days", "").strip()
    days: int | None = None
    if days_raw:
        if not days_raw.isdigit() or not 1 <= int(days_raw) <= 3650:
            errors["key_days"] = "expiry must be a whole number of days from 1 to 3650"
        else:
            days = int(days_raw)
    if errors or kind is None:
        return await _access_page(who, status=400, errors=errors, form=form, form_for="keys")
    issued = await credentials.create_credential(who.ctx, who.scope, kind, name, days)
    # Shown once, in this answer only; the server keeps its hash.
    return await _access_page(
        who, new_key={"name": name, "kind": kind.value, "raw": issued.raw_key}
    )


@router.post("/access/keys/{credential_id}/revoke")
async def revoke_key(request: Request, credential_id: str) -> Response:
    who = await viewer(request)
    await posted_form(request, who)
    await credentials.revoke_credential(
        who.ctx, who.scope, resource_id(credential_id, "credential")
    )
    return redirect("/access", notice="key-revoked")


@router.post("/access/invitations")
async def invite(request: Request) -> Response:
    who = await viewer(request)
    form = await posted_form(request, who)
    email = form.get("email", "").strip()
    errors: dict[str, str] = {}
    try:
        role = Role(form.get("role", ""))
    except ValueError:
        role = Role.MEMBER
        errors["invite_role"] = "choose admin, member or viewer"
    if "@" not in email or len(email) > 320:
        errors["invite_email"] = "enter an email address"
    if not errors:
        try:
            invitation, token = await teams.invite(who.ctx, who.scope, email, role)
        except Forbidden:
            raise
        except RunyardError as exc:
            errors["invite_email"] = exc.message
        else:
            return await _access_page(
                who, new_invitation={"email": invitation.email_address, "token": token}
            )
    return await _access_page(who, status=400, errors=errors, form=form, form_for="invite")


@router.post("/access/invitations/{invitation_id}/cancel")
async def cancel_invitation(request: Request, invitation_id: str) -> Response:
    who = await viewer(request)
    await posted_form(request, who)
    await teams.cancel_invitation(who.ctx, who.scope, resource_id(invitation_id, "invitation"))
    return redirect("/access", notice="invitation-cancelled")


@router.post("/access/members/{user_id}/remove")
async def remove_member(request: Request, user_id: str) -> Response:
    who = await viewer(request)
    await posted_form(request, who)
    await teams.remove_member(who.ctx, who.scope, resource_id(user_id, "member"))
    return redirect("/access", notice="member-removed")


@router.post("/access/members/{user_id}/role")
async def change_role(request: Request, user_id: str) -> Response:
    who = await viewer(request)
    form = await posted_form(request, who)
    who.scope.require(Permission.MANAGE_MEMBERS)
    member = await teams.get_member(who.ctx, who.scope, resource_id(user_id, "member"))
    field = f"role-{member.user_id}"
    try:
        role = Role(form.get("member_role", ""))
        await teams.change_role(who.ctx, who.scope, member.user_id, role)
    except ValueError:
        return await _access_page(who, status=400, errors={field: "choose a role"})
    except RunyardError as exc:
        # A rule of the team (the owner's role, your own role): shown next to the menu.
        return await _access_page(who, status=exc.status_code, errors={field: exc.message})
    return redirect("/access", notice="role-changed")


@router.post("/access/webhooks")
async def create_webhook(request: Request) -> Response:
    who = await viewer(request)
    form = await posted_form(request, who)
    name = form.get("display_name", "").strip()
    url = form.get("webhook_url", "").strip()
    events = [e for e in WEBHOOK_EVENTS if form.get(f"event.{e}")]
    errors: dict[str, str] = {}
    if not 1 <= len(name) <= 255:
        errors["hook_name"] = "give the webhook a name"
    if not events:
        errors["hook_events"] = "choose at least one event"
    if not errors:
        try:
            hook, secret = await webhooks.create_webhook(who.ctx, who.scope, name, url, events)
        except Forbidden:
            raise
        except RunyardError as exc:
            errors["hook_url"] = exc.message
        else:
            return await _access_page(
                who, new_webhook={"name": hook.display_name, "secret": secret}
            )
    return await _access_page(who, status=400, errors=errors, form=form, form_for="hooks")


async def _webhook_page(
    who: Viewer, webhook_id: str, *, notice: str | None = None, new_secret: str | None = None
) -> Response:
    hook = await webhooks.get_webhook(who.ctx, who.scope, webhook_id)
    deliveries, total = await webhooks.list_deliveries(who.ctx, who.scope, hook.id, first_page())
    return page(
        "webhook.html",
        who,
        nav="access",
        notice=notice,
        hook=hook,
        deliveries=deliveries,
        total=total,
        new_secret=new_secret,
        title=hook.display_name,
    )


@router.get("/access/webhooks/{webhook_id}")
async def webhook_log(
    request: Request, webhook_id: str, notice: Annotated[str, Query(max_length=40)] = ""
) -> Response:
    who = await viewer(request)
    return await _webhook_page(
        who, resource_id(webhook_id, "webhook"), notice=WEBHOOK_NOTICES.get(notice)
    )


@router.post("/access/webhooks/{webhook_id}/ping")
async def ping_webhook(request: Request, webhook_id: str) -> Response:
    who = await viewer(request)
    await posted_form(request, who)
    hook_id = resource_id(webhook_id, "webhook")
    await webhooks.ping(who.ctx, who.scope, hook_id)
    return redirect(f"/access/webhooks/{hook_id}", notice="ping-queued")


@router.post("/access/webhooks/{webhook_id}/rotate-secret")
async def rotate_webhook_secret(request: Request, webhook_id: str) -> Response:
    who = await viewer(request)
    await posted_form(request, who)
    hook_id = resource_id(webhook_id, "webhook")
    secret = await webhooks.rotate_secret(who.ctx, who.scope, hook_id)
    # Shown once, in this answer only (like a new key).
    return await _webhook_page(who, hook_id, new_secret=secret)


@router.post("/access/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver")
async def redeliver(request: Request, webhook_id: str, delivery_id: str) -> Response:
    who = await viewer(request)
    await posted_form(request, who)
    hook_id = resource_id(webhook_id, "webhook")
    await webhooks.redeliver(who.ctx, who.scope, hook_id, resource_id(delivery_id, "delivery"))
    return redirect(f"/access/webhooks/{hook_id}", notice="redelivery-queued")


@router.post("/access/webhooks/{webhook_id}/delete")
async def delete_webhook(request: Request, webhook_id: str) -> Response:
    who = await viewer(request)
    await posted_form(request, who)
    await webhooks.delete_webhook(who.ctx, who.scope, resource_id(webhook_id, "webhook"))
    return redirect("/access", notice="webhook-deleted")

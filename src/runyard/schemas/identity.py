"""Request and response bodies of accounts, teams, invitations, keys and pairing (Cyberun
field names), and the page metadata every list answer carries."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    EmailStr,
    Field,
    Strict,
    StringConstraints,
)

from runyard.domain import limits
from runyard.domain.credentials import CredentialKind
from runyard.domain.pages import Page
from runyard.domain.roles import Role


def _stripped(value: str) -> str:
    """Surrounding white space goes after the length is checked on what was sent, so the
    OpenAPI document's ``maxLength`` is exactly the rule (a fuzzer found the difference)."""
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    return value


Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.NAME_MAX),
    AfterValidator(_stripped),
]
Password = Annotated[
    str, StringConstraints(min_length=limits.PASSWORD_MIN, max_length=limits.PASSWORD_MAX)
]
Token = Annotated[str, StringConstraints(min_length=1, max_length=limits.TOKEN_MAX)]
OptionalName = Annotated[
    str, StringConstraints(max_length=limits.NAME_MAX), AfterValidator(str.strip)
]
AssignableRole = Literal["admin", "member", "viewer"]


class PageMeta(BaseModel):
    current_page: int
    per_page: int
    total_count: int

    @classmethod
    def of(cls, page: Page, total: int) -> PageMeta:
        return cls(current_page=page.current_page, per_page=page.per_page, total_count=total)


class IdResponse(BaseModel):
    id: str


class SuccessResponse(BaseModel):
    is_success: bool = True


# -- auth --------------------------------------------------------------------------------------


class RegisterRequest(BaseModel):
    email_address: EmailStr = Field(max_length=limits.EMAIL_MAX)
    user_password: Password
    first_name: OptionalName = ""
    last_name: OptionalName = ""
    display_name: Annotated[
        str, StringConstraints(strip_whitespace=True, max_length=limits.DISPLAY_NAME_MAX)
    ] = ""
    invitation_token: Token | None = None


class LoginRequest(BaseModel):
    email_address: Annotated[str, StringConstraints(max_length=limits.EMAIL_MAX)]
    user_password: Annotated[str, StringConstraints(max_length=limits.PASSWORD_MAX)]


class PasswordChangeRequest(BaseModel):
    current_password: Annotated[str, StringConstraints(max_length=limits.PASSWORD_MAX)]
    new_password: Password


class RefreshRequest(BaseModel):
    refresh_token: Token


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    expires_in: int


# -- users and teams ---------------------------------------------------------------------------


class TeamRef(BaseModel):
    id: str
    display_name: str
    member_role: Role


class FeatureFlags(BaseModel):
    global_: dict[str, Any] = Field(serialization_alias="global")
    account: dict[str, Any]
    teams: dict[str, Any]


class UserProfile(BaseModel):
    id: str
    first_name: str
    last_name: str
    display_name: str
    email_address: str
    created_at: datetime
    team_list: list[TeamRef]
    feature_flags: FeatureFlags


class TeamCreateRequest(BaseModel):
    display_name: Name


class TeamUpdateRequest(BaseModel):
    display_name: Name


class TeamItem(BaseModel):
    id: str
    display_name: str
    owner_id: str
    member_role: Role
    created_at: datetime
    updated_at: datetime


class TeamDetail(TeamItem):
    member_count: int


class TeamListResponse(BaseModel):
    team_list: list[TeamItem]
    page_meta: PageMeta


class TransferRequest(BaseModel):
    new_owner_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F-]{36}$")]


class MemberItem(BaseModel):
    user_id: str
    email_address: str
    display_name: str
    member_role: Role
    joined_at: datetime


class MemberListResponse(BaseModel):
    member_list: list[MemberItem]
    page_meta: PageMeta


class RoleUpdateRequest(BaseModel):
    member_role: AssignableRole = Field(validation_alias=AliasChoices("member_role", "role"))


# -- invitations -------------------------------------------------------------------------------


class InvitationCreateRequest(BaseModel):
    email_address: EmailStr = Field(max_length=limits.EMAIL_MAX)
    invitation_role: AssignableRole


class InvitationCreated(BaseModel):
    id: str
    invitation_token: str | None = None


class InvitationItem(BaseModel):
    id: str
    email_address: str
    invitation_role: Role
    created_at: datetime
    expires_at: datetime


class InvitationListResponse(BaseModel):
    invitation_list: list[InvitationItem]
    page_meta: PageMeta


class InvitationAcceptRequest(BaseModel):
    invitation_token: Token


class InvitationAccepted(BaseModel):
    team_id: str
    member_role: Role


# -- credentials and pairing -------------------------------------------------------------------


class CredentialCreateRequest(BaseModel):
    kind: CredentialKind
    display_name: Name
    expires_in_days: (
        Annotated[
            int, Strict(), Field(ge=limits.KEY_EXPIRY_DAYS.low, le=limits.KEY_EXPIRY_DAYS.high)
        ]
        | None
    ) = None


class CredentialCreated(BaseModel):
    id: str
    kind: CredentialKind
    key_prefix: str
    raw_key: str
    expires_at: datetime | None = None


class CredentialItem(BaseModel):
    id: str
    kind: CredentialKind
    display_name: str
    key_prefix: str
    user_id: str | None
    key_status: Literal["active", "revoked", "expired"]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


class CredentialListResponse(BaseModel):
    credentials: list[CredentialItem]
    page_meta: PageMeta


class PairStartResponse(BaseModel):
    device_code: str
    user_code: str
    verification_uri: str
    expires_in: int
    interval: int


class PairPollRequest(BaseModel):
    device_code: Token


class PairPollResponse(BaseModel):
    status: Literal["pending", "approved"]
    raw_key: str | None = None
    agent_key: str | None = None


class PairConfirmRequest(BaseModel):
    user_code: Annotated[str, StringConstraints(min_length=1, max_length=limits.USER_CODE_MAX)]
    device_name: OptionalName | None = None

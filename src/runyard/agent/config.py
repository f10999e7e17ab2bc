"""The agent's settings: flags override the environment (``RUNYARD_AGENT_…``).

``AgentSettings(**flags)`` takes only the flags a user gave; everything else comes from the
environment or the defaults. Lists (labels, pools) are comma-separated in flags and env alike.
The config file of the ComfyUI agent (issue 6) slots in as one more settings source.
"""

from __future__ import annotations

import re
import socket
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from runyard.agent.simulate import Behaviour
from runyard.protocol.v1 import Pool

_AGENT_ID_CHARS = re.compile(r"[^A-Za-z0-9._:@-]+")


def default_agent_id() -> str:
    """The host name, made a valid agent id."""
    name = _AGENT_ID_CHARS.sub("-", socket.gethostname()).strip("-")
    return name[:200] or "agent"


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RUNYARD_AGENT_", extra="ignore", populate_by_name=True
    )

    #: The server's base URL (``http(s)://host:port``); the WebSocket address is derived.
    gateway: str = ""
    #: The agent key (``ak-…``). Never logged.
    key: SecretStr = SecretStr("")
    agent_id: Annotated[
        str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@-]+$")
    ] = Field(
        default_factory=default_agent_id,
        # RUNYARD_AGENT_ID in the environment; ``agent_id`` as a keyword.
        validation_alias=AliasChoices("RUNYARD_AGENT_ID", "RUNYARD_AGENT_AGENT_ID"),
    )
    labels: Annotated[list[str], NoDecode] = []
    pools: Annotated[list[Pool], NoDecode] = ["team"]
    capacity: int = Field(default=1, ge=1, le=256)
    #: Seconds to let running attempts finish on SIGTERM before they are handed back.
    grace_seconds: float = Field(default=30.0, ge=0)
    #: The ComfyUI this agent drives (on this machine: ComfyUI has no authentication).
    comfyui_url: str = "http://127.0.0.1:8188"
    #: Where inputs and outputs are staged while an attempt runs (empty: the system temp dir).
    work_dir: str = ""
    #: Run the protocol-level simulated worker instead of driving ComfyUI.
    simulate: bool = False
    behaviour: Behaviour = "succeed"
    run_seconds: float = Field(default=0.0, ge=0)

    @field_validator("labels", "pools", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("pools")
    @classmethod
    def _unique_pools(cls, value: list[Pool]) -> list[Pool]:
        if not value:
            raise ValueError("at least one pool (team, community)")
        return list(dict.fromkeys(value))

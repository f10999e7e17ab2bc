"""The agent's settings: flags, then a YAML config file, then the environment
(``RUNYARD_AGENT_…``), then the defaults.

``AgentSettings(**flags)`` takes only the flags a user gave; everything else comes from the
environment or the defaults. Lists (labels, pools) are comma-separated in flags and env alike
(a YAML list works too in the file). ``load_settings(flags, config_file)`` adds the file: its
keys are the settings' names (``gateway``, ``key``, ``agent_id``, ``capacity``, …, the names of
the ``RUNYARD_AGENT_…`` variables in lower case); an unknown key or a bad value raises
:class:`ConfigError` with one line saying which and where.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from runyard.agent.simulate import Behaviour
from runyard.domain import limits
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
    capacity: int = Field(default=1, ge=limits.CAPACITY.low, le=limits.CAPACITY.high)
    #: Seconds to let running attempts finish on SIGTERM before they are handed back.
    grace_seconds: float = Field(default=30.0, ge=0)
    #: The ComfyUI this agent drives (on this machine: ComfyUI has no authentication).
    comfyui_url: str = "http://127.0.0.1:8188"
    #: Where inputs and outputs are staged while an attempt runs (empty: the system temp dir).
    work_dir: str = ""
    #: How often ComfyUI's ``/system_stats`` is read to report ``unhealthy``/``idle``.
    health_interval_seconds: float = Field(default=5.0, ge=0.1, le=3600)
    #: What runs the attempts: a name in ``runyard.agent.main.RUNNERS`` (``comfyui``,
    #: ``simulate``). Empty: ``simulate`` when ``simulate`` is on, else ``comfyui``.
    runner: str = ""
    #: Run the protocol-level simulated worker instead of driving ComfyUI (``runner: simulate``).
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


class ConfigError(Exception):
    """The agent's settings are unusable; the message is one line for the user."""


#: Keys the config file accepts besides the field names: the env spellings that differ.
_FILE_ALIASES = {"id": "agent_id", "grace": "grace_seconds", "behavior": "behaviour"}


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings of a YAML config file, keyed by field name; raises :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config file must be a mapping of settings (key: value)")
    known = set(AgentSettings.model_fields)
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for raw_key, value in data.items():
        key = _FILE_ALIASES.get(str(raw_key), str(raw_key))
        if key not in known:
            unknown.append(str(raw_key))
            continue
        if key in values:
            raise ConfigError(f"{path}: {raw_key}: given twice")
        values[key] = value
    if unknown:
        names = ", ".join(sorted(unknown))
        raise ConfigError(
            f"{path}: unknown setting{'s' if len(unknown) > 1 else ''}: {names} "
            f"(known: {', '.join(sorted(known))})"
        )
    return values


def load_settings(flags: Mapping[str, Any], config_file: Path | None = None) -> AgentSettings:
    """Flags (those given, not None) over the config file over the environment over the
    defaults. Raises :class:`ConfigError` with one line naming the bad setting and its source."""
    given = {k: v for k, v in flags.items() if v is not None}
    from_file = read_config_file(config_file) if config_file is not None else {}
    try:
        return AgentSettings(**{**from_file, **given})
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field_name = ".".join(str(part) for part in error["loc"][:1])
            if field_name in given:
                source = "flag"
            elif field_name in from_file:
                source = str(config_file)
            else:
                source = "environment"
            where = ".".join(str(part) for part in error["loc"])
            lines.append(f"{where}: {error['msg']} ({source})")
        raise ConfigError("; ".join(lines)) from None

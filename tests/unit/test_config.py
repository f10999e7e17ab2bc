from __future__ import annotations

from pathlib import Path

import pytest

from runyard.config import load_settings
from runyard.store.db import async_url


def test_defaults_need_no_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RUNYARD_DATA_DIR", "RUNYARD_DATABASE_URL", "RUNYARD_LOGGER_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.data_dir == Path("runyard-data")
    assert settings.database_url() == f"sqlite:///{Path('runyard-data/runyard.db').resolve()}"
    assert settings.public_url() == "http://127.0.0.1:8080"


def test_environment_sets_sections_and_flag_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNYARD_DATA_DIR", "/srv/elsewhere")
    monkeypatch.setenv("RUNYARD_DATABASE_URL", "postgresql://u@db:5432/runyard")
    monkeypatch.setenv("RUNYARD_LOGGER_FORMAT", "json")
    monkeypatch.setenv("RUNYARD_AUTH_REGISTRATION", "false")
    settings = load_settings(tmp_path)
    assert settings.data_dir == tmp_path
    assert settings.database_url() == "postgresql://u@db:5432/runyard"
    assert settings.logger.format == "json"
    assert settings.auth.registration is False


def test_database_urls_map_to_async_drivers() -> None:
    assert async_url("sqlite:////tmp/x.db").drivername == "sqlite+aiosqlite"
    assert async_url("postgresql://u@h:5432/d").drivername == "postgresql+asyncpg"
    assert async_url("postgres://u@h/d").drivername == "postgresql+asyncpg"
    with pytest.raises(ValueError, match="unsupported database URL"):
        async_url("mysql://u@h/d")

"""Settings: environment and .env reading, defaults, and misconfigurations named at start."""

from __future__ import annotations

import multiprocessing
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.config import (
    JWT_SECRET_FILE,
    ConfigError,
    Settings,
    load_settings,
)
from app.test.server import ROOT

# Variables the seed's README lists, with the defaults it gives.
SEED_DEFAULTS = {
    "API_STR": "/api",
    "LOG_LEVEL": "INFO",
    "LOG_FILE_ENABLED": False,
    "LOG_FILE_LEVEL": "WARNING",
    "LOG_FILE_ROTATION": "24",
    "LOG_FILE_RETENTION": "30",
    "JWT_EXP": 30,
    "OTP_LENGTH": 6,
    "OTP_AUTHENTICATOR_INTERVAL": 30,
    "OTP_EMAIL_INTERVAL": 600,
    "ENVIRONMENT": "local",
    "FEATURE_FLAGS_ENABLED": False,
    "FEATURE_FLAGS_FILE": "feature_flags.json",
    "PROTECTED_INTERACTIVE_DOCS": True,
    "EMAIL_METHOD": "none",
    "RATE_LIMITER_ENABLED": False,
    "REDIS_URL": None,
    "DATABASE_URI": None,
    # DESIGN.md §5
    "DATA_DIR": Path("./data"),
    "PASSWORD_BCRYPT_ROUNDS": 12,
    "EMAIL_CHECK_DELIVERABILITY": True,
    "DEACTIVATE_ON_PASSWORD_FORGOT": False,
    "MAX_UPLOAD_SIZE_MB": 10,
    "FORWARDED_ALLOW_IPS": [],
    "ALLOWED_REDIRECT_ORIGINS": [],
    "METRICS_ENABLED": False,
    "METRICS_ALLOW_IPS": ["127.0.0.1"],
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of the developer's shell or .env file leaks into these tests."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def settings(**env: str) -> Settings:
    return load_settings(_env_file=None, **env)


def test_defaults_are_the_seeds() -> None:
    values = settings()
    for name, default in SEED_DEFAULTS.items():
        assert getattr(values, name) == default, name


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_EXP", "60")
    monkeypatch.setenv("API_STR", "userAPI/")
    monkeypatch.setenv("FEATURE_FLAGS_ENABLED", "True")
    monkeypatch.setenv("ALLOWED_REDIRECT_ORIGINS", "https://a.example, https://b.example/")
    monkeypatch.setenv("EMAIL_METHOD", "MailJet")
    values = settings()
    assert values.JWT_EXP == 60
    assert values.API_STR == "/userAPI"
    assert values.FEATURE_FLAGS_ENABLED is True
    assert values.ALLOWED_REDIRECT_ORIGINS == ["https://a.example", "https://b.example"]
    # "mailjet" is read as the seed's "mj"; without its keys it falls back to none.
    assert values.EMAIL_METHOD == "none"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("JWT_EXP=45\nLOG_LEVEL=debug\n")
    values = load_settings()
    assert values.JWT_EXP == 45
    assert values.LOG_LEVEL == "DEBUG"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"BASE_URL": "not a url"}, "BASE_URL"),
        ({"FRONTEND_URL": "ftp://files.example"}, "FRONTEND_URL"),
        ({"EMAIL_METHOD": "pigeon"}, "EMAIL_METHOD"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"JWT_EXP": "soon"}, "JWT_EXP"),
        ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL"),
        ({"DATABASE_URI": "mysql://db/x"}, "DATABASE_URI"),
        ({"POSTGRES_SERVER": "db", "POSTGRES_USER": "u"}, "POSTGRES_PASSWORD"),
        ({"ALLOWED_REDIRECT_ORIGINS": "evil"}, "ALLOWED_REDIRECT_ORIGINS"),
        ({"ENVIRONMENT": "production"}, "JWT_SECRET_KEY"),
        ({"ENVIRONMENT": "production", "JWT_SECRET_KEY": "short"}, "JWT_SECRET_KEY"),
        ({"STORAGE_BACKEND": "s3"}, "S3_BUCKET"),
        ({"STORAGE_BACKEND": "ftp"}, "STORAGE_BACKEND"),
        (
            {"STORAGE_BACKEND": "s3", "S3_BUCKET": "b", "S3_ENDPOINT_URL": "minio"},
            "S3_ENDPOINT_URL",
        ),
    ],
)
def test_misconfiguration_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        settings(**env)


def test_production_accepts_a_long_secret() -> None:
    values = settings(ENVIRONMENT="production", JWT_SECRET_KEY="k" * 32)
    assert values.is_production


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"EMAIL_METHOD": "smtp", "SMTP_HOST": "mail.example"}, "SMTP_PORT, SMTP_SENDER_EMAIL"),
        (
            {
                "EMAIL_METHOD": "smtp",
                "SMTP_HOST": "mail.example",
                "SMTP_PORT": "587",
                "SMTP_SENDER_EMAIL": "no-reply@example.com",
                "SMTP_USER": "me",
            },
            "SMTP_PASSWORD",
        ),
        ({"EMAIL_METHOD": "mj", "MJ_APIKEY_PUBLIC": "pub"}, "MJ_APIKEY_PRIVATE, MJ_SENDER_EMAIL"),
    ],
)
def test_incomplete_email_settings_fall_back_to_none(env: dict[str, str], missing: str) -> None:
    values = settings(**env)
    assert values.EMAIL_METHOD == "none"
    assert len(values.warnings) == 1
    assert missing in values.warnings[0]


def test_complete_smtp_settings_are_kept() -> None:
    values = settings(
        EMAIL_METHOD="smtp",
        SMTP_HOST="mail.example",
        SMTP_PORT="25",
        SMTP_SENDER_EMAIL="no-reply@example.com",
    )
    assert values.EMAIL_METHOD == "smtp"
    assert values.warnings == []


def test_database_url_precedence(tmp_path: Path) -> None:
    assert settings(DATA_DIR=str(tmp_path)).database_url == (
        f"sqlite+aiosqlite:///{tmp_path / 'user_manager.db'}"
    )
    assert settings(DATABASE_URI="postgres://u:p@h/db").database_url == (
        "postgresql+psycopg://u:p@h/db"
    )
    postgres = settings(
        DATABASE_URI="sqlite:///ignored.db",
        POSTGRES_SERVER="db",
        POSTGRES_USER="user",
        POSTGRES_PASSWORD="p@ss/word",
        POSTGRES_DB="UserManagerAPI",
    )
    assert postgres.database_url == (
        "postgresql+psycopg://user:p%40ss%2Fword@db:5432/UserManagerAPI"
    )


def test_presigned_downloads_without_s3_are_ignored_with_a_warning() -> None:
    values = settings(S3_PRESIGNED_DOWNLOADS="true")
    assert values.STORAGE_BACKEND == "local"
    assert any("S3_PRESIGNED_DOWNLOADS" in warning for warning in values.warnings)
    quiet = settings(STORAGE_BACKEND="s3", S3_BUCKET="files", S3_PRESIGNED_DOWNLOADS="true")
    assert quiet.warnings == []


def test_secrets_are_not_in_the_settings_repr() -> None:
    values = settings(
        JWT_SECRET_KEY="topsecret-" * 4,
        SMTP_PASSWORD="smtp-pass",
        DATABASE_URI="sqlite:///x",
        S3_SECRET_ACCESS_KEY="s3-secret",
    )
    text = repr(values)
    assert "topsecret" not in text
    assert "smtp-pass" not in text
    assert "s3-secret" not in text


def test_local_generates_and_keeps_a_jwt_secret(tmp_path: Path) -> None:
    secret = settings(DATA_DIR=str(tmp_path)).JWT_SECRET_KEY
    assert len(secret.encode()) >= 32
    path = tmp_path / JWT_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == secret
    # A restart (a new process, new settings) reads the same secret back.
    restarted = settings(DATA_DIR=str(tmp_path))
    assert secret == restarted.JWT_SECRET_KEY


def test_a_given_jwt_secret_is_not_written_to_disk(tmp_path: Path) -> None:
    values = settings(DATA_DIR=str(tmp_path), JWT_SECRET_KEY="given-" * 8)
    assert values.JWT_SECRET_KEY == "given-" * 8
    assert not (tmp_path / JWT_SECRET_FILE).exists()


def test_production_without_a_secret_writes_none(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        settings(ENVIRONMENT="production", DATA_DIR=str(data_dir))
    assert not data_dir.exists()


def test_the_server_refuses_to_start_and_names_the_variable(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k not in Settings.model_fields},
        "DATA_DIR": str(tmp_path),
        "ENVIRONMENT": "production",
        "JWT_SECRET_KEY": "too-short",
    }
    result = subprocess.run(
        [sys.executable, "-c", "import app.main"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "JWT_SECRET_KEY" in result.stderr
    assert "too-short" not in result.stderr


def _documented_variables(text: str) -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))


def test_env_example_lists_every_setting() -> None:
    documented = _documented_variables((ROOT / "app" / ".env.example").read_text())
    assert set(Settings.model_fields) - documented == set()
    assert documented - set(Settings.model_fields) == set()


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    undocumented = [name for name in Settings.model_fields if f"`{name}`" not in readme]
    assert undocumented == []


def _secret_in_a_race(barrier, data_dirs: list[str], results) -> None:
    """One starting worker: for each fresh DATA_DIR, wait for the others, then ask."""
    for data_dir in data_dirs:
        barrier.wait()
        try:
            results.put((data_dir, settings(DATA_DIR=data_dir).JWT_SECRET_KEY))
        except ConfigError as error:
            results.put((data_dir, f"error: {error}"))


def test_workers_starting_at_once_share_one_complete_secret(tmp_path: Path) -> None:
    """Several processes generate the secret in the same empty DATA_DIR at the same moment.

    Whoever loses the creation race must read the winner's whole secret, never an empty
    or half-written file, and never publish a different one.
    """
    workers, rounds = 6, 25
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    results = context.Queue()
    data_dirs = [str(tmp_path / f"round{index}") for index in range(rounds)]
    processes = [
        context.Process(target=_secret_in_a_race, args=(barrier, data_dirs, results))
        for _ in range(workers)
    ]
    seen: dict[str, list[str]] = {}
    try:
        for process in processes:
            process.start()
        for _ in range(workers * rounds):
            data_dir, secret = results.get(timeout=120)
            seen.setdefault(data_dir, []).append(secret)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    for data_dir, secrets_seen in seen.items():
        on_disk = (Path(data_dir) / JWT_SECRET_FILE).read_text()
        assert secrets_seen == [on_disk] * workers, data_dir
        assert len(on_disk.encode()) >= 32
        assert sorted(path.name for path in Path(data_dir).iterdir()) == [JWT_SECRET_FILE]

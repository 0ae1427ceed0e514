"""Development settings: console mail, BASE_URL from PORT, an unwritable DATA_DIR."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.core.config import ConfigError, Settings, load_settings
from app.core.email import ConsoleEmailSender, Mailer, create_sender
from app.services.accounts import EmailUndeliverable, check_deliverability
from app.test.factories import signup_body
from app.test.mail import token_in
from app.test.server import ROOT, LiveServer, listening_socket, wait_ready

#: The verification link of a service without a front end: its own page, the token in
#: the fragment.
TOKEN_LINK = re.compile(r"(http://localhost:(\d+)/account/verify#token=[A-Za-z0-9_.-]+)")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of the developer's shell or .env file leaks into these tests."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def settings(**env: object) -> Settings:
    return load_settings(_env_file=None, **env)


def _clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any setting, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env.update(values)
    return env


# Console mail ------------------------------------------------------------------------


async def test_a_console_mail_is_printed_whole(tmp_path: Path) -> None:
    values = settings(DATA_DIR=tmp_path, EMAIL_METHOD="console")
    assert isinstance(create_sender(values), ConsoleEmailSender)
    stream = io.StringIO()
    mailer = Mailer(values, ConsoleEmailSender(stream))
    assert mailer.enabled  # verification and reset mails are sent, not skipped
    link = "http://localhost:8000/api/auth/email/verify?token=abc_DEF-123"
    message = mailer.render(
        "verify_email",
        to="ada@example.com",
        subject="Confirm your email",
        display_name="Ada",
        link=link,
        valid_hours=24,
    )
    await mailer.sender.send(message)
    printed = stream.getvalue()
    assert printed.startswith("=" * 72 + "\n")
    assert printed.endswith("=" * 72 + "\n")
    assert "To: ada@example.com" in printed
    assert "Subject: Confirm your email" in printed
    assert link in printed  # whole: not redacted like a log line
    assert "<html" not in printed.lower()  # the text part, readable in a terminal


def test_production_refuses_console_mail(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="EMAIL_METHOD=console") as raised:
        settings(
            DATA_DIR=tmp_path,
            EMAIL_METHOD="console",
            ENVIRONMENT="production",
            JWT_SECRET_KEY="k" * 32,
        )
    assert "ENVIRONMENT=production" in str(raised.value)


async def test_console_mail_skips_the_deliverability_check(tmp_path: Path) -> None:
    """Nothing is delivered, so a made-up domain is fine (no DNS lookup)."""
    values = settings(DATA_DIR=tmp_path, EMAIL_METHOD="console")
    assert values.EMAIL_CHECK_DELIVERABILITY is True
    await check_deliverability(values, "ada@nowhere.invalid")
    smtp = settings(
        DATA_DIR=tmp_path,
        EMAIL_METHOD="smtp",
        SMTP_HOST="mail",
        SMTP_PORT="25",
        SMTP_SENDER_EMAIL="me@example.com",
    )
    with pytest.raises(EmailUndeliverable):
        await check_deliverability(smtp, "ada@nowhere.invalid")


# BASE_URL ----------------------------------------------------------------------------


def test_base_url_defaults_to_the_port_in_use(tmp_path: Path) -> None:
    assert settings(DATA_DIR=tmp_path).BASE_URL == "http://localhost:8000"
    assert settings(DATA_DIR=tmp_path, PORT="8123").BASE_URL == "http://localhost:8123"
    given = settings(DATA_DIR=tmp_path, PORT="8123", BASE_URL="https://api.example/")
    assert given.BASE_URL == "https://api.example"


def test_a_bad_port_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PORT"):
        settings(DATA_DIR=tmp_path, PORT="99999")


def test_make_run_prints_a_working_link_and_keeps_it_out_of_the_log_file(
    tmp_path: Path,
) -> None:
    """`make run` on another port, no BASE_URL: the printed link is on that port, works,
    and the log file (at DEBUG) never sees the token."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    sock.close()
    data_dir = tmp_path / "data"
    env = _clean_env(
        DATA_DIR=str(data_dir),
        EMAIL_METHOD="console",
        LOG_FILE_ENABLED="True",
        LOG_FILE_LEVEL="DEBUG",
        PASSWORD_BCRYPT_ROUNDS="4",
        PYTHONUNBUFFERED="1",
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        HOST="127.0.0.1",
        PORT=str(port),
    )
    log_path = tmp_path / "console.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["sh", "scripts/serve.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = LiveServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        wait_ready(server)
        body = signup_body()
        assert httpx.post(f"{server.url}/api/auth/signup", json=body).status_code == 201
        deadline = time.monotonic() + 15
        while not (found := TOKEN_LINK.search(server.output)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert found, server.output
        link, link_port = found.groups()
        assert int(link_port) == port
        assert f"To: {body['email']}" in server.output
        page = httpx.get(link.replace("localhost", "127.0.0.1"))
        assert page.status_code == 200, page.text
        # What the page's script does with the token in the fragment.
        verified = httpx.post(f"{server.url}/api/auth/email/verify", json={"token": token_in(link)})
        assert verified.status_code == 200, verified.text
    finally:
        server.stop()
    token = token_in(link)
    log_file = (data_dir / "logs" / "user_manager.log").read_text()
    assert "sent via console" in log_file  # the file sink was on and heard of the mail
    assert token not in log_file


# An unwritable DATA_DIR --------------------------------------------------------------


@pytest.fixture
def unwritable(tmp_path: Path) -> Path:
    """A DATA_DIR that cannot be made even by root: a regular file is in its path."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    return blocker / "data"


def test_an_unwritable_data_dir_names_the_variable(unwritable: Path) -> None:
    # No JWT secret given: the one to keep there would fail too, DATA_DIR is named first.
    with pytest.raises(ConfigError, match=r"^DATA_DIR: cannot create"):
        settings(DATA_DIR=unwritable)
    # A JWT secret given: nothing else writes at start, and still the start is refused.
    with pytest.raises(ConfigError, match=r"^DATA_DIR: cannot create"):
        settings(DATA_DIR=unwritable, JWT_SECRET_KEY="k" * 32)


def test_a_file_as_data_dir_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("")
    with pytest.raises(ConfigError, match="DATA_DIR"):
        settings(DATA_DIR=path)


def test_a_read_only_data_dir_is_refused(tmp_path: Path) -> None:
    """A DATA_DIR this process really cannot write: chmod 0500 for an ordinary user;
    root ignores modes, so as root the directory is bind-mounted read-only instead."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    code = (
        "from app.core.config import load_settings\n"
        f"load_settings(_env_file=None, DATA_DIR={str(data_dir)!r}, JWT_SECRET_KEY='k' * 32)\n"
    )
    command = [sys.executable, "-c", code]
    if os.getuid() != 0:
        data_dir.chmod(0o500)
    else:
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("running as root without unshare(1): no way to make DATA_DIR read-only")
        mount = f"mount --bind -o ro {shlex.quote(str(data_dir))} {shlex.quote(str(data_dir))}"
        command = [unshare, "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *command]
    result = subprocess.run(
        command, cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DATA_DIR" in result.stderr, result.stderr
    assert "not writable by this process" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-c", "import app.main"], id="server"),
        pytest.param([sys.executable, "-m", "app.cli", "migrate"], id="cli"),
    ],
)
def test_server_and_cli_stop_with_one_line(unwritable: Path, command: list[str]) -> None:
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=_clean_env(DATA_DIR=str(unwritable)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    problem = [line for line in result.stderr.splitlines() if "DATA_DIR" in line]
    assert len(problem) == 1, result.stderr
    assert str(unwritable) in problem[0]
    assert "Traceback" not in result.stderr
    assert "PermissionError" not in result.stderr

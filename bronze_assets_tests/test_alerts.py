"""Alert delivery against a real SMTP server, a real HTTP endpoint and a real bz_alerts table."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from bronze_assets.defs.resources import BronzeStorage
from bronze_assets.lib.alerts import (
    DEFAULT_RECIPIENTS,
    OK,
    Alert,
    AlertState,
    DeltaAlertTable,
    LogChannel,
    Severity,
    SmtpChannel,
    WebhookChannel,
    channels_for,
    deliver,
)
from bronze_assets.lib.delta import control
from bronze_assets.settings import bronze_root

TOKEN_PATH = "/services/T0001/B0002/s3cr3tT0ken"
ALERT = Alert(
    kpi="error_rate", severity=Severity.CRITICAL, table_name="bz_orders", value=0.12, threshold=0.05,
    message="12 % of the loads of bz_orders failed in the last hour",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Inbox:
    host: str
    port: int
    messages: list[tuple[list[str], Message]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"


def _smtp(**kwargs) -> Iterator[Inbox]:
    inbox = Inbox("127.0.0.1", _free_port())
    controller = Controller(inbox, hostname=inbox.host, port=inbox.port, **kwargs)
    controller.start()
    yield inbox
    controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[Inbox]:
    yield from _smtp()


@pytest.fixture
def smtp_server_with_auth() -> Iterator[Inbox]:
    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b"alerts", b"pa55word")
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535

    yield from _smtp(authenticator=authenticator, auth_require_tls=False, auth_required=True)


@dataclass
class Hook:
    base: str
    requests: list[tuple[str, str, dict]] = field(default_factory=list)


@pytest.fixture
def webhook_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hook]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    requests: list[tuple[str, str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            requests.append((self.path, self.headers["Content-Type"], json.loads(body)))
            status = 200 if self.path == TOKEN_PATH else 500
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"boom")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield Hook(f"http://127.0.0.1:{server.server_address[1]}", requests)
    server.shutdown()
    server.server_close()


def test_email_is_delivered_over_smtp(smtp_server: Inbox) -> None:
    channel = SmtpChannel(smtp_server.host, smtp_server.port, recipients=("a@example.com", "b@example.com"))
    assert deliver(ALERT, [channel]) == {"email": OK}
    ((rcpts, msg),) = smtp_server.messages
    assert rcpts == ["a@example.com", "b@example.com"]
    assert msg["Subject"] == ALERT.subject == "[bronze] CRITICAL FIRING error_rate on bz_orders"
    assert msg["From"] == "bronze-alerts@company.com"
    body = msg.get_payload(decode=True).decode()
    assert ALERT.message in body and "value:     0.12" in body and "threshold: 0.05" in body


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_email_login_and_a_wrong_password(smtp_server_with_auth: Inbox) -> None:
    inbox = smtp_server_with_auth
    good = SmtpChannel(inbox.host, inbox.port, user="alerts", password="pa55word")
    bad = SmtpChannel(inbox.host, inbox.port, user="alerts", password="wrong-pw", name="email-bad")
    outcome = deliver(ALERT, [good, bad])
    assert outcome["email"] == OK
    assert outcome["email-bad"].startswith("error: SMTPAuthenticationError")
    assert "wrong-pw" not in outcome["email-bad"] and "wrong-pw" not in repr(bad)
    assert len(inbox.messages) == 1


def test_webhook_posts_slack_json(webhook_server: Hook) -> None:
    channel = WebhookChannel(webhook_server.base + TOKEN_PATH, timeout=5)
    assert deliver(ALERT, [channel]) == {"webhook": OK}
    ((path, content_type, payload),) = webhook_server.requests
    assert path == TOKEN_PATH and content_type == "application/json"
    assert list(payload) == ["text"]
    assert payload["text"].startswith(ALERT.subject) and ALERT.message in payload["text"]


def test_webhook_failure_never_reveals_the_token(webhook_server: Hook, caplog) -> None:
    failing = WebhookChannel(webhook_server.base + "/services/T0001/B0002/rejectedT0ken")
    unreachable = WebhookChannel(f"http://127.0.0.1:{_free_port()}/hooks/unreachableT0ken", name="hook2")
    with caplog.at_level(logging.WARNING):
        outcome = deliver(ALERT, [failing, unreachable])
    assert outcome["webhook"] == f"error: ChannelError: webhook {webhook_server.base} answered HTTP 500"
    assert outcome["hook2"].startswith("error: ChannelError: webhook http://127.0.0.1:")
    assert "unreachable" in outcome["hook2"]
    text = caplog.text + repr(failing) + repr(unreachable) + json.dumps(outcome)
    assert "T0ken" not in text and "/services" not in text and "/hooks" not in text
    with pytest.raises(ValueError, match="http"):
        WebhookChannel("file:///etc/passwd")


def test_bz_alerts_gets_the_row_with_channel_outcomes(tmp_path: Path, webhook_server: Hook) -> None:
    root = str(tmp_path / "bronze")
    resolved = Alert("quality_score", "WARNING", "back above threshold", state="RESOLVED",
                     table_name="bz_products", value=97.5, threshold=95.0)
    outcome = deliver(resolved, [DeltaAlertTable(root), WebhookChannel(webhook_server.base + TOKEN_PATH)])
    assert outcome == {"webhook": OK, "bz_alerts": OK}
    (row,) = control.read_table(root, control.ALERTS).to_pylist()
    assert row["alert_id"] == resolved.alert_id
    assert (row["kpi"], row["severity"], row["state"], row["table_name"]) == (
        "quality_score", "WARNING", "RESOLVED", "bz_products")
    assert (row["value"], row["threshold"], row["message"]) == (97.5, 95.0, "back above threshold")
    assert row["created_at"] == resolved.created_at
    assert json.loads(row["channels"]) == {"webhook": OK}


def test_one_failing_channel_does_not_stop_the_others(
    tmp_path: Path, smtp_server: Inbox, webhook_server: Hook, caplog,
) -> None:
    root = str(tmp_path / "bronze")
    channels = [
        SmtpChannel("127.0.0.1", _free_port(), timeout=2),  # nobody listens there
        SmtpChannel(smtp_server.host, smtp_server.port, name="email-ok"),
        WebhookChannel(webhook_server.base + TOKEN_PATH),
        LogChannel(logging.getLogger("bronze_test_alerts")),
        DeltaAlertTable(root),
    ]
    with caplog.at_level(logging.INFO, logger="bronze_test_alerts"):
        outcome = deliver(ALERT, channels)
    assert outcome["email"].startswith("error: ConnectionRefusedError")
    assert {k: v for k, v in outcome.items() if k != "email"} == {
        "email-ok": OK, "webhook": OK, "log": OK, "bz_alerts": OK}
    assert len(smtp_server.messages) == 1 and len(webhook_server.requests) == 1
    (record,) = [r for r in caplog.records if r.name == "bronze_test_alerts"]
    assert record.levelno == logging.ERROR and ALERT.subject in record.getMessage()
    (row,) = control.read_table(root, control.ALERTS).to_pylist()
    stored = json.loads(row["channels"])
    assert stored["email"].startswith("error:") and stored["webhook"] == OK and stored["log"] == OK


def test_a_failing_alert_table_does_not_stop_delivery(tmp_path: Path, smtp_server: Inbox) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the bronze root should be")
    outcome = deliver(ALERT, [DeltaAlertTable(str(blocker)), SmtpChannel(smtp_server.host, smtp_server.port)])
    assert outcome["email"] == OK and outcome["bz_alerts"].startswith("error:")
    assert len(smtp_server.messages) == 1


def test_channels_from_env(monkeypatch: pytest.MonkeyPatch, smtp_server: Inbox, webhook_server: Hook) -> None:
    def channels_from_env() -> list:  # as the alert sensor's resource reads them
        return channels_for(BronzeStorage().storage())

    assert [type(c) for c in channels_from_env()] == [LogChannel, DeltaAlertTable]

    monkeypatch.setenv("BRONZE_SMTP_HOST", smtp_server.host)
    monkeypatch.setenv("BRONZE_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("BRONZE_ALERT_WEBHOOK_URL", webhook_server.base + TOKEN_PATH)
    channels = channels_from_env()
    log, email, hook, table = channels
    assert (type(log), type(email), type(hook), type(table)) == (
        LogChannel, SmtpChannel, WebhookChannel, DeltaAlertTable)
    assert email.recipients == DEFAULT_RECIPIENTS == ("data-engineering@company.com", "data-ops@company.com")
    assert email.starttls is None and email.user is None
    assert table.storage.root == bronze_root()

    outcome = deliver(Alert("freshness", Severity.WARNING, "bz_customers is 30 h old"), channels)
    assert set(outcome.values()) == {OK}
    assert smtp_server.messages[0][0] == list(DEFAULT_RECIPIENTS)
    assert control.read_table(bronze_root(), control.ALERTS).num_rows == 1

    monkeypatch.setenv("BRONZE_ALERT_EMAIL_TO", "oncall@example.com; lead@example.com")
    monkeypatch.setenv("BRONZE_SMTP_STARTTLS", "true")
    email = channels_from_env()[1]
    assert email.recipients == ("oncall@example.com", "lead@example.com") and email.starttls is True
    # STARTTLS demanded but the test server does not offer it: fails instead of sending in clear
    assert deliver(ALERT, [email])["email"].startswith("error: SMTPNotSupportedError")


def test_alert_values_are_validated() -> None:
    with pytest.raises(ValueError):
        Alert("error_rate", "SEVERE", "nope")
    assert Alert("x", "WARNING", "m").state is AlertState.FIRING

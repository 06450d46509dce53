"""Notification channels: email (SMTP), Slack-compatible webhook, the ``bz_alerts`` table, a logger.

A channel has a ``name`` and ``send(alert)``, which raises on failure; :func:`deliver` isolates
the channels from each other. Secrets (SMTP password, the webhook URL's path/token) are kept out
of ``repr`` and of error messages.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from bronze_assets.lib.alerts.model import Alert, AlertState, Severity
from bronze_assets.lib.delta import control
from bronze_assets.lib.delta.storage import StorageLike

DEFAULT_RECIPIENTS = ("data-engineering@company.com", "data-ops@company.com")
DEFAULT_SENDER = "bronze-alerts@company.com"
DEFAULT_TIMEOUT = 10.0
LOGGER_NAME = "bronze_assets.alerts"


class ChannelError(RuntimeError):
    """A delivery failure whose message is safe to log and store."""


@runtime_checkable
class Channel(Protocol):
    name: str

    def send(self, alert: Alert) -> None: ...


@dataclass
class SmtpChannel:
    """Email over SMTP. ``starttls=None`` upgrades when the server offers STARTTLS; ``use_ssl`` is SMTPS."""

    host: str
    port: int = 25
    recipients: tuple[str, ...] = DEFAULT_RECIPIENTS
    sender: str = DEFAULT_SENDER
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool | None = None
    use_ssl: bool = False
    timeout: float = DEFAULT_TIMEOUT
    name: str = "email"

    def message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = alert.subject
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["X-Bronze-Alert-Id"] = alert.alert_id
        msg.set_content(alert.body)
        return msg

    def send(self, alert: Alert) -> None:
        if not self.recipients:
            raise ChannelError("email: no recipients configured")
        context = ssl.create_default_context()
        if self.use_ssl:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with smtp:
            if not self.use_ssl:
                smtp.ehlo()
                if self.starttls or (self.starttls is None and smtp.has_extn("starttls")):
                    smtp.starttls(context=context)
                    smtp.ehlo()
            if self.user:
                smtp.login(self.user, self.password or "")
            smtp.send_message(self.message(alert))


@dataclass
class WebhookChannel:
    """POST ``{"text": ...}`` (Slack incoming-webhook format; Mattermost/Teams-compatible endpoints)."""

    url: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    name: str = "webhook"

    def __post_init__(self) -> None:
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"webhook URL must be http(s), got {self.target}")

    @property
    def target(self) -> str:
        """scheme://host[:port] only: the path and query of a webhook URL are its secret."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme or '?'}://{parts.hostname or '?'}{port}"

    def payload(self, alert: Alert) -> bytes:
        return json.dumps({"text": alert.body}).encode()

    def send(self, alert: Alert) -> None:
        request = urllib.request.Request(
            self.url, data=self.payload(alert), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "bronze-assets-alerts"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:  # carries the full URL: do not chain it
            raise ChannelError(f"webhook {self.target} answered HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise ChannelError(f"webhook {self.target} unreachable: {exc.reason}") from None
        except OSError as exc:
            raise ChannelError(f"webhook {self.target} failed: {type(exc).__name__}: {exc}") from None


@dataclass
class DeltaAlertTable:
    """Append the alert to ``bz_alerts`` with the other channels' outcome as JSON."""

    storage: StorageLike = field(repr=False)
    name: str = control.ALERTS

    def send(self, alert: Alert) -> None:
        self.record(alert, {})

    def record(self, alert: Alert, outcome: Mapping[str, str]) -> None:
        channels = json.dumps(dict(outcome), sort_keys=True)
        control.append_rows(self.storage, control.ALERTS, [alert.row(channels)])


@dataclass
class LogChannel:
    """Log through ``logger`` (a ``logging.Logger`` or Dagster's ``context.log``).

    CRITICAL → error, WARNING → warning, RESOLVED → info.
    """

    logger: Any = None
    name: str = "log"

    def send(self, alert: Alert) -> None:
        log = self.logger or logging.getLogger(LOGGER_NAME)
        text = f"{alert.subject}: {alert.message}"
        if alert.value is not None:
            text += f" (value {alert.value:g}"
            text += f", threshold {alert.threshold:g})" if alert.threshold is not None else ")"
        if alert.state is AlertState.RESOLVED:
            log.info(text)
        elif alert.severity is Severity.CRITICAL:
            log.error(text)
        else:
            log.warning(text)

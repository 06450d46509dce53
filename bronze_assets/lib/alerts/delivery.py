"""Deliver an alert to every channel, and build the channel list from the settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from bronze_assets.lib.alerts.channels import (
    DEFAULT_RECIPIENTS,
    DEFAULT_SENDER,
    DEFAULT_TIMEOUT,
    LOGGER_NAME,
    Channel,
    DeltaAlertTable,
    LogChannel,
    SmtpChannel,
    WebhookChannel,
)
from bronze_assets.lib.alerts.model import Alert
from bronze_assets.lib.delta.storage import Storage

OK = "ok"

ENV_SMTP_HOST = "BRONZE_SMTP_HOST"
ENV_SMTP_PORT = "BRONZE_SMTP_PORT"
ENV_SMTP_USER = "BRONZE_SMTP_USER"
ENV_SMTP_PASSWORD = "BRONZE_SMTP_PASSWORD"
ENV_SMTP_STARTTLS = "BRONZE_SMTP_STARTTLS"
ENV_SMTP_SSL = "BRONZE_SMTP_SSL"
ENV_SMTP_TIMEOUT = "BRONZE_SMTP_TIMEOUT"
ENV_EMAIL_FROM = "BRONZE_ALERT_EMAIL_FROM"
ENV_EMAIL_TO = "BRONZE_ALERT_EMAIL_TO"
ENV_WEBHOOK_URL = "BRONZE_ALERT_WEBHOOK_URL"
ENV_WEBHOOK_TIMEOUT = "BRONZE_ALERT_WEBHOOK_TIMEOUT"

_log = logging.getLogger(LOGGER_NAME)


def deliver(alert: Alert, channels: Sequence[Channel]) -> dict[str, str]:
    """Send ``alert`` to every channel; returns ``{channel name: "ok" | "error: ..."}``.

    A failing channel never stops the others. ``bz_alerts`` channels go last and store the
    outcome of all the other channels in the row's ``channels`` column.
    """
    outcome: dict[str, str] = {}
    recorders = [c for c in channels if isinstance(c, DeltaAlertTable)]
    for channel in channels:
        if not isinstance(channel, DeltaAlertTable):
            outcome[_unique(channel.name, outcome)] = _attempt(channel.send, alert)
    others = dict(outcome)
    for recorder in recorders:
        outcome[_unique(recorder.name, outcome)] = _attempt(recorder.record, alert, others)
    return outcome


def _attempt(fn: Any, *args: Any) -> str:
    try:
        fn(*args)
    except Exception as exc:
        error = f"error: {type(exc).__name__}: {exc}"[:500]
        _log.warning("alert channel failed: %s", error)
        return error
    return OK


def _unique(name: str, taken: Mapping[str, str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}#{n}"
    return candidate


def channels_for(storage: Storage, logger: Any = None) -> list[Channel]:
    """Log + ``bz_alerts`` of ``storage`` always; email when ``BRONZE_SMTP_HOST`` is set; webhook
    when ``BRONZE_ALERT_WEBHOOK_URL`` is set (in the storage's settings: ``Settings.alerts``)."""
    values = storage.settings.alerts
    channels: list[Channel] = [LogChannel(logger)]
    if smtp := smtp_channel(values):
        channels.append(smtp)
    if url := values.get(ENV_WEBHOOK_URL):
        timeout = float(values.get(ENV_WEBHOOK_TIMEOUT) or DEFAULT_TIMEOUT)
        channels.append(WebhookChannel(url, timeout=timeout))
    channels.append(DeltaAlertTable(storage))
    return channels


def smtp_channel(values: Mapping[str, str]) -> SmtpChannel | None:
    """The email channel ``values`` configure (``BRONZE_SMTP_*``/``BRONZE_ALERT_EMAIL_*`` as an entry
    point read them), or None without a host."""
    host = values.get(ENV_SMTP_HOST)
    if not host:
        return None
    use_ssl = _flag(values.get(ENV_SMTP_SSL)) or False
    recipients = tuple(r.strip() for r in (values.get(ENV_EMAIL_TO) or "").replace(";", ",").split(",")
                       if r.strip())
    return SmtpChannel(
        host=host,
        port=int(values.get(ENV_SMTP_PORT) or (465 if use_ssl else 25)),
        recipients=recipients or DEFAULT_RECIPIENTS,
        sender=values.get(ENV_EMAIL_FROM) or DEFAULT_SENDER,
        user=values.get(ENV_SMTP_USER) or None,
        password=values.get(ENV_SMTP_PASSWORD) or None,
        starttls=_flag(values.get(ENV_SMTP_STARTTLS)),
        use_ssl=use_ssl,
        timeout=float(values.get(ENV_SMTP_TIMEOUT) or DEFAULT_TIMEOUT),
    )


def _flag(value: str | None) -> bool | None:
    """``true/1/yes/on`` → True, ``false/0/no/off`` → False, unset/``auto`` → None."""
    if value is None or not value.strip() or value.strip().lower() == "auto":
        return None
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")

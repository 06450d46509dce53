"""Alert notification channels: email, Slack-compatible webhook, the ``bz_alerts`` table, the log."""

from bronze_assets.lib.alerts.channels import (
    DEFAULT_RECIPIENTS,
    DEFAULT_SENDER,
    Channel,
    ChannelError,
    DeltaAlertTable,
    LogChannel,
    SmtpChannel,
    WebhookChannel,
)
from bronze_assets.lib.alerts.delivery import OK, channels_for, deliver, smtp_channel
from bronze_assets.lib.alerts.model import Alert, AlertState, Severity

__all__ = [
    "DEFAULT_RECIPIENTS",
    "DEFAULT_SENDER",
    "OK",
    "Alert",
    "AlertState",
    "Channel",
    "ChannelError",
    "DeltaAlertTable",
    "LogChannel",
    "Severity",
    "SmtpChannel",
    "WebhookChannel",
    "channels_for",
    "deliver",
    "smtp_channel",
]

"""The alert record every channel delivers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"


class AlertState(StrEnum):
    FIRING = "FIRING"
    RESOLVED = "RESOLVED"


@dataclass(frozen=True)
class Alert:
    """One KPI alert (or its resolution) for a table, or for the platform when ``table_name`` is None."""

    kpi: str
    severity: Severity
    message: str
    state: AlertState = AlertState.FIRING
    table_name: str | None = None
    value: float | None = None
    threshold: float | None = None
    alert_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", Severity(self.severity))
        object.__setattr__(self, "state", AlertState(self.state))

    @property
    def subject(self) -> str:
        """One line: ``[bronze] CRITICAL FIRING error_rate on bz_orders``."""
        scope = f" on {self.table_name}" if self.table_name else ""
        return f"[bronze] {self.severity} {self.state} {self.kpi}{scope}"

    @property
    def body(self) -> str:
        """Plain-text details for email/chat."""
        lines = [self.subject, "", self.message, ""]
        if self.value is not None:
            lines.append(f"value:     {self.value:g}")
        if self.threshold is not None:
            lines.append(f"threshold: {self.threshold:g}")
        lines += [f"table:     {self.table_name or '-'}", f"at:        {self.created_at.isoformat()}",
                  f"alert id:  {self.alert_id}"]
        return "\n".join(lines)

    def row(self, channels: str | None = None) -> dict[str, Any]:
        """The ``bz_alerts`` row (``channels``: JSON of the delivery outcome per channel)."""
        return {
            "alert_id": self.alert_id, "kpi": self.kpi, "severity": str(self.severity),
            "state": str(self.state), "table_name": self.table_name, "value": self.value,
            "threshold": self.threshold, "message": self.message, "created_at": self.created_at,
            "channels": channels,
        }

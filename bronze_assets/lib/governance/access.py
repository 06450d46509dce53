"""Who sees which personal data: ONE access matrix, used by the Python reader and the UC SQL.

Our reading of the seed's §14.1 (not available to us) — change it here and both follow:

| role | customers.customer_name, customers.email | suppliers.contact_number |
|---|---|---|
| admin | plaintext | plaintext |
| engineer | masked | plaintext |
| operations | masked | plaintext |
| analyst | masked | masked |
| scientist | masked | masked |

Every column in a contract's ``pii_columns`` is governed; a role sees plaintext only where the
matrix says so. Rows with ``record_status = 'FORGOTTEN'`` read NULL for every role.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import polars as pl

from bronze_assets.contracts import Contract


class Role(StrEnum):
    ANALYST = "analyst"
    ENGINEER = "engineer"
    SCIENTIST = "scientist"
    OPERATIONS = "operations"
    ADMIN = "admin"

    @property
    def group(self) -> str:
        """The account group of this role on Databricks (Unity Catalog)."""
        return f"{GROUP_PREFIX}{self.value}"


class Mask(StrEnum):
    EMAIL = "email"  # first character + ***@domain
    NAME = "name"  # first character + ***
    PHONE = "phone"  # *** + last 4 digits
    FULL = "full"  # ***


GROUP_PREFIX = "bronze_"
ALL_COLUMNS = "*"

# role → the PII columns ("table.column", or "*") it may read in plaintext
PLAINTEXT: Mapping[Role, frozenset[str]] = {
    Role.ADMIN: frozenset({ALL_COLUMNS}),
    Role.ENGINEER: frozenset({"suppliers.contact_number"}),
    Role.OPERATIONS: frozenset({"suppliers.contact_number"}),
    Role.ANALYST: frozenset(),
    Role.SCIENTIST: frozenset(),
}

# how a PII column is masked for roles without plaintext access (default: FULL)
MASKS: Mapping[str, Mask] = {
    "customers.customer_name": Mask.NAME,
    "customers.email": Mask.EMAIL,
    "suppliers.contact_number": Mask.PHONE,
}

# which roles may SELECT which kinds of bronze tables (the UC GRANTs)
DATA_TABLE_ROLES: tuple[Role, ...] = tuple(Role)
CONTROL_TABLE_ROLES: tuple[Role, ...] = (Role.ENGINEER, Role.OPERATIONS, Role.ADMIN)
KEY_STORE_ROLES: tuple[Role, ...] = (Role.ADMIN,)
QUARANTINE_ROLES: tuple[Role, ...] = (Role.ADMIN,)  # raw refused rows may hold plaintext PII


def parse_role(value: str | Role) -> Role:
    """``value`` as a :class:`Role`, with an error that lists the valid roles."""
    try:
        return Role(str(value).lower())
    except ValueError:
        raise ValueError(f"unknown role {value!r}; use one of: {', '.join(r.value for r in Role)}") from None


def sees_plaintext(role: Role, contract: Contract, column: str) -> bool:
    """Whether ``role`` reads ``contract.column`` in plaintext (non-PII columns: always)."""
    if column not in contract.pii_columns:
        return True
    allowed = PLAINTEXT[role]
    return ALL_COLUMNS in allowed or f"{contract.name}.{column}" in allowed


def plaintext_roles(contract: Contract, column: str) -> list[Role]:
    """The roles that read ``contract.column`` in plaintext."""
    return [r for r in Role if sees_plaintext(r, contract, column)]


def mask_for(contract: Contract, column: str) -> Mask:
    return MASKS.get(f"{contract.name}.{column}", Mask.FULL)


def mask_expr(mask: Mask, column: str) -> pl.Expr:
    """Polars expression masking ``column`` (NULL stays NULL)."""
    col = pl.col(column)
    first = col.str.slice(0, 1)
    if mask is Mask.NAME:
        out = first + pl.lit("***")
    elif mask is Mask.EMAIL:
        domain = col.str.extract(r"@([^@]*)$", 1)
        with_domain = first + pl.lit("***@") + domain
        out = pl.when(domain.is_not_null()).then(with_domain).otherwise(first + pl.lit("***"))
    elif mask is Mask.PHONE:
        out = pl.lit("***") + col.str.replace_all(r"\D", "").str.slice(-4)
    else:
        out = pl.lit("***")
    return pl.when(col.is_null()).then(pl.lit(None, pl.Utf8)).otherwise(out).alias(column)

"""An object store that bronze's root cannot be reached on, in one line naming the root, what
failed, the variables looked for and the fix (the ``bronze`` CLI, ``bronze demo``, the failure
policy of :mod:`bronze_assets.lib.failures`). Imports neither Dagster nor delta-rs: the CLI words
a store that is down before it loads them."""

from __future__ import annotations

import re
from collections.abc import Iterator

# an object store that bronze's root cannot be reached on, in one line naming the root, the
# variables looked for and the fix (``bronze`` CLI, ``bronze demo``; not retried)
_S3_VARIABLES = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an instance profile)"
_OBJECT_STORE_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("no credentials", re.compile(r"while loading credentials|IMDS session token|no credentials|"
                                  r"MissingCredentials|CredentialsNotLoaded", re.IGNORECASE),
     "looked for {variables}: set them (README, 'Deploying', S3)"),
    ("access denied", re.compile(r"InvalidAccessKeyId|SignatureDoesNotMatch|ExpiredToken|AccessDenied|"
                                 r"AuthorizationFailure|AuthenticationFailed|\b403 Forbidden", re.IGNORECASE),
     "the store refused the credentials of {variables}: check the keys and that they may read and "
     "write the bucket"),
    ("no such bucket", re.compile(r"NoSuchBucket|ContainerNotFound|bucket does not exist", re.IGNORECASE),
     "create the bucket (or container) or fix $BRONZE_ROOT"),  # as _BUCKET_FIX
    ("store unreachable", re.compile(r"tcp connect error|dns error|Connection refused|"
                                     r"error trying to connect|No route to host", re.IGNORECASE),
     "check {endpoint} or the network"),
)
_REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def object_store_problem(exc: BaseException, root: str, endpoint_url: str | None = None) -> str | None:
    """When ``exc`` is the object store under ``root`` refusing or unreachable (no credentials,
    access denied, no such bucket, endpoint down): one line naming the root, what failed, the
    variables looked for (and the S3 endpoint configured, ``endpoint_url``:
    ``Settings.object_store_endpoint``) and the fix; else None (a local root, or another error)."""
    if not _REMOTE.match(root) or root.startswith("file://"):
        return None
    text = " ".join(str(link) for link in exception_chain(exc))
    if root.startswith(("s3://", "s3a://")):
        variables, url = _S3_VARIABLES, endpoint_url
        endpoint = f"AWS_ENDPOINT_URL{f' (now {url})' if url else ''} (and AWS_ALLOW_HTTP=true for http://)"
    elif root.startswith(("abfs", "az://", "adl")):
        variables = "AZURE_STORAGE_ACCOUNT_NAME/AZURE_STORAGE_ACCOUNT_KEY"
        endpoint = "the account name in $BRONZE_ROOT (AZURITE_BLOB_STORAGE_URL for the emulator)"
    else:
        variables, endpoint = "the store's credentials", "the store's endpoint"
    for what, pattern, fix in _OBJECT_STORE_RULES:
        if pattern.search(text):
            return f"bronze root {root}: {what} — {fix.format(variables=variables, endpoint=endpoint)}"
    return None


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during (a bounded walk)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 10:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)

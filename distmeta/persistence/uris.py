"""Storage URIs that carry no credentials, and their redacted form for everything printed or stored.

A run's URI ends up in ``config.yaml``, its checkpoints, the writer lease, Tune's experiment
state, error messages and logs, so a secret in it would be copied everywhere. Two rules:

* :func:`check_uri` accepts only the query keys of :data:`ALLOWED_QUERY_KEYS`, per scheme: the
  ``pyarrow.fs.FileSystem.from_uri`` options that select an endpoint or a behaviour, never one
  that carries a credential (S3 ``user:secret@``, Azure ``client_secret``/``tenant_id``/SAS
  tokens, HDFS extra configuration). User info is refused too, except the ``container@account``
  of Azure's ``abfs[s]://`` URIs and ``anonymous@`` for GCS, which name no secret.
* :func:`redact_uri` is the one way a URI is shown or written: any user-info password, any user
  info outside those forms and the value of every query key not on the allowlist become
  ``REDACTED``. For a URI that passed :func:`check_uri` it is the URI itself.

Credentials come from the environment, the way each client reads them (``AWS_*``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_*``).
"""
from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from distmeta.errors import DistmetaError

REDACTED = "REDACTED"

_S3 = frozenset({"region", "scheme", "endpoint_override", "allow_delayed_open", "allow_bucket_creation",
                 "allow_bucket_deletion", "tls_ca_file_path", "tls_ca_dir_path", "tls_verify_certificates",
                 "smart_defaults"})
_GCS = frozenset({"location", "scheme", "endpoint_override", "retry_limit_seconds"})
_AZURE = frozenset({"blob_storage_authority", "dfs_storage_authority", "enable_tls", "credential_kind"})
_HDFS = frozenset({"replication", "buffer_size", "default_block_size", "user", "kerb_ticket"})

#: Query keys a storage URI may carry, per scheme (the non-secret options of ``FileSystem.from_uri``).
ALLOWED_QUERY_KEYS: dict[str, frozenset[str]] = {
    "s3": _S3, "gs": _GCS, "gcs": _GCS, "abfs": _AZURE, "abfss": _AZURE, "hdfs": _HDFS, "viewfs": _HDFS,
}
_ENV_HINT = ("give credentials through the environment instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
             "AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET "
             "with credential_kind=environment)")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


class StorageError(DistmetaError):
    """A storage URI is malformed, unreachable, or an operation on it failed; the message names the URI (redacted)."""


class UriCredentialsError(StorageError):
    """A storage URI carries user info or a query key that is not on its scheme's allowlist."""


def _user_info_allowed(scheme: str, user: str, password: str | None) -> bool:
    """Whether ``user[:password]@`` names no secret: Azure's ``container@``, GCS's ``anonymous@``."""
    if password is not None:
        return False
    return scheme in ("abfs", "abfss") or (scheme in ("gs", "gcs") and user == "anonymous")


def _split_netloc(netloc: str) -> tuple[str | None, str | None, str]:
    """``(user, password, host[:port])``; user and password are None when absent."""
    if "@" not in netloc:
        return None, None, netloc
    info, host = netloc.rsplit("@", 1)
    user, sep, password = info.partition(":")
    return user, (password if sep else None), host


def redact_uri(uri: str) -> str:
    """``uri`` as it may be printed or stored: secrets (see the module docstring) replaced by ``REDACTED``.

    Args:
        uri: any URI or path (a path or ``file://`` URI without a query comes back unchanged).

    Returns:
        The redacted URI; the URI itself when it passes :func:`check_uri`.
    """
    text = str(uri)
    if "://" not in text:
        return text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    user, password, host = _split_netloc(parts.netloc)
    if user is None:
        netloc = host
    elif _user_info_allowed(scheme, user, password):
        netloc = parts.netloc
    elif password is not None and scheme in ("abfs", "abfss"):
        netloc = f"{user}:{REDACTED}@{host}"
    else:
        netloc = f"{REDACTED}@{host}"
    allowed = ALLOWED_QUERY_KEYS.get(scheme, frozenset())
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        key = unquote(pair.partition("=")[0])
        pairs.append(pair if key in allowed else f"{pair.partition('=')[0]}={REDACTED}")
    out = f"{parts.scheme}://{netloc}{parts.path}"
    if pairs:
        out += "?" + "&".join(pairs)
    if parts.fragment:
        out += f"#{REDACTED}"
    return out


def redact_text(text: str) -> str:
    """``text`` with every URI in it passed through :func:`redact_uri` (command lines, library error messages)."""
    return _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), str(text))


def check_uri(uri: str) -> None:
    """Refuse a storage URI that carries credentials, before it is used, stored or printed.

    Args:
        uri: a remote storage URI (``s3://bucket/run?endpoint_override=...``).

    Raises:
        UriCredentialsError: it has user info (other than Azure's ``container@account`` or GCS's
            ``anonymous@``), a user-info password, a fragment, or a query key not in
            :data:`ALLOWED_QUERY_KEYS` for its scheme; the message names the keys, never their values.
    """
    parts = urlsplit(str(uri))
    scheme = parts.scheme.lower()
    shown = redact_uri(uri)
    user, password, _ = _split_netloc(parts.netloc)
    if user is not None and not _user_info_allowed(scheme, user, password):
        what = "a password in its user info" if password is not None else "user info"
        raise UriCredentialsError(f"storage URI {shown} carries {what}: it would be written into config.yaml, "
                                  f"checkpoints, the writer lease and logs; {_ENV_HINT}")
    allowed = ALLOWED_QUERY_KEYS.get(scheme, frozenset())
    keys = [unquote(p.partition("=")[0]) for p in parts.query.split("&")] if parts.query else []
    refused = sorted({k for k in keys if k not in allowed})
    if refused:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise UriCredentialsError(
            f"storage URI {shown}: query key(s) {', '.join(refused)} are not accepted for {scheme}:// (accepted: "
            f"{accepted}). Only options that name no credential may be in a URI, since it is written into "
            f"config.yaml, checkpoints, the writer lease and logs; {_ENV_HINT}")
    if parts.fragment:
        raise UriCredentialsError(f"storage URI {shown} has a '#' fragment, which no storage reads; remove it")


__all__ = ["ALLOWED_QUERY_KEYS", "REDACTED", "StorageError", "UriCredentialsError", "check_uri", "redact_text",
           "redact_uri"]

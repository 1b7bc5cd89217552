"""Turning a configuration into params: secrets redacted, nested keys flattened.

Kept free of pydantic so that commands which only read run directories
(``foundry-track runs/show``) can use it without paying for the config models.
"""

from __future__ import annotations

import re
from typing import Any, Final, Mapping

__all__ = ["REDACTED", "redact", "flatten", "is_secret_key", "mask_credentials"]

REDACTED: Final = "***"
_SECRET = re.compile(r"key|token|secret|password", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET.search(key))


_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/:@\s]+:)[^@/\s]+(?P<tail>@)", re.IGNORECASE)


_BARE_CREDENTIALS = re.compile(r"(?P<head>^[^:@/\s]+:)[^@/\s]+(?P<tail>@)")


def mask_credentials(text: str) -> str:
    """``http://user:pw@host`` -> ``http://user:***@host``, and the same for a
    bare ``user:pw@host`` (a name that should never hold a credential)."""
    text = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}\g<tail>", text)
    return _BARE_CREDENTIALS.sub(rf"\g<head>{REDACTED}\g<tail>", text)


def redact(value: Any) -> Any:
    """A copy of ``value`` with every value under a secret-looking key replaced.

    A key is secret when it contains ``key``, ``token``, ``secret`` or
    ``password`` (any case) — ``WANDB_API_KEY``, ``hf_token``, ``db.password``.
    A password inside a URL (``http://user:pw@host``) is masked wherever it is.
    """
    if isinstance(value, Mapping):
        return {k: (REDACTED if isinstance(k, str) and is_secret_key(k) and v is not None else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}\g<tail>", value)
    return value


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; lists and other values are kept whole."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat

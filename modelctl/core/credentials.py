"""What a credential written in plain text looks like, found anywhere in a nested document.

Two signs, either enough: a value of a known credential shape (the token formats the providers
document: Slack's incoming-webhook URLs and `xox?-` tokens, AWS access key ids, GitHub's `ghp_`
family, PEM private keys, JSON web tokens, ...; a URL carrying a password or a token parameter; an
HTTP `Bearer`/`Basic` credential), or a key named like a credential (`password`, `api_key`,
`DB_TOKEN`, `privateKey`, ...) holding text. Keys that name where a secret is kept rather than the
secret itself (`*_secret`, `*_file`, `*Ref`, ...) are references and never a finding; the caller
says which whole parts of a document are where secrets belong (a Secret's data).

Findings name the key path and the kind of credential, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

# (what it is, text every value of that shape holds, its shape): the plain text is looked for
# first, since most values hold none of it and a search for it is cheap. Each shape is specific
# enough not to match hashes, versions or PromQL.
SHAPES: tuple[tuple[str, tuple[str, ...], re.Pattern[str]], ...] = tuple(
    (name, needles, re.compile(pattern))
    for name, needles, pattern in (
        (
            "a Slack webhook URL",
            ("hooks.slack.com/",),
            r"hooks\.slack\.com/(services|workflows|triggers)/\S+",
        ),
        ("a Slack token", ("xox",), r"\bxox[abposr]-[0-9A-Za-z-]{10,}"),
        ("a Discord webhook URL", ("/api/webhooks/",), r"discord(app)?\.com/api/webhooks/\d+/\S+"),
        (
            "a Microsoft Teams webhook URL",
            ("webhook",),
            r"\.webhook\.office\.com/\S+|outlook\.office(365)?\.com/webhook/\S+",
        ),
        ("a URL with a password", ("://",), r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),
        (
            "a URL with a token",
            ("=",),
            r"[?&](access_token|token|api[_-]?key|apikey|key|secret|password|passwd|sig|signature|auth)=[^&\s]{8,}",
        ),
        ("a private key", ("PRIVATE KEY-----",), r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        ("an HTTP credential", ("Bearer", "Basic"), r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{16,}"),
        ("an AWS access key id", ("AKIA", "ASIA"), r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
        (
            "a GitHub token",
            ("gh", "github_pat_"),
            r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
        ),
        ("a GitLab token", ("glpat-",), r"\bglpat-[A-Za-z0-9_-]{20,}"),
        ("a Google API key", ("AIza",), r"\bAIza[0-9A-Za-z_-]{35}\b"),
        ("a Stripe secret key", ("k_live_",), r"\b[rs]k_live_[0-9A-Za-z]{16,}"),
        ("a SendGrid API key", ("SG.",), r"\bSG\.[\w-]{22}\.[\w-]{43}\b"),
        ("an OpenAI API key", ("sk-",), r"\bsk-(proj-)?[A-Za-z0-9_-]{32,}"),
        ("a JSON web token", ("eyJ",), r"\beyJ[\w-]{10,}\.eyJ[\w-]{10,}\.[\w-]{10,}"),
    )
)
_ANY_NEEDLE = re.compile("|".join(re.escape(needle) for _, needles, _ in SHAPES for needle in needles))
# A key named like the credential itself, after camelCase is split into snake_case words.
CREDENTIAL_KEY = re.compile(
    r"(^|_)(password|passwd|pwd|secret|token|api_?key|credentials?|private_?key|client_secret)$"
)
# A key naming where a secret is kept: its value is a name or a path, not the secret.
REFERENCE_KEY = re.compile(r"(_secret|_file|_ref|_name|_path|_env)$")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

Path = tuple[str | int, ...]


@cache
def _names_a_credential(key: str) -> bool:
    words = _CAMEL.sub("_", key).replace("-", "_").lower()
    return bool(CREDENTIAL_KEY.search(words)) and not REFERENCE_KEY.search(words)


def credential_in(value: str, key: str = "") -> str | None:
    """What credential `value` (held under `key`) looks like, e.g. 'a Slack webhook URL', or None."""
    if _ANY_NEEDLE.search(value):
        for name, needles, shape in SHAPES:
            if any(needle in value for needle in needles) and shape.search(value):
                return name
    if value.strip() and _names_a_credential(key):
        return f"a credential (key {key!r})"
    return None


def find_credentials(document: Any, path: Path = ()) -> Iterator[tuple[Path, str]]:
    """(key path, what it looks like) for every string of `document` that looks like a credential.

    A mapping `{"name": N, "value": V}` (a container's env entry, a header) is judged with N as
    V's key, so `DB_PASSWORD=hunter2` is found.
    """
    if isinstance(document, dict):
        named = document.get("name") if isinstance(document.get("name"), str) else None
        for key, item in document.items():
            label = named if key == "value" and named else str(key)
            if isinstance(item, str):
                found = credential_in(item, label)
                if found:
                    yield (*path, key), found
            else:
                yield from find_credentials(item, (*path, key))
    elif isinstance(document, list):
        for index, item in enumerate(document):
            if isinstance(item, str):
                found = credential_in(item)
                if found:
                    yield (*path, index), found
            else:
                yield from find_credentials(item, (*path, index))


def dotted(path: Path) -> str:
    """A key path as written in errors: `a.b[0].c`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text

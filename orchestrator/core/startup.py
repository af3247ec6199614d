"""Start-up checks every process runs before it serves: fail early, in one line.

`announce` warns about `PTU_*` variables no setting reads (naming the closest valid
name: a typo is otherwise silently ignored) and logs `effective_configuration`, every
setting with secrets redacted. `check_redis` and `check_port` turn an unreachable
Redis or a taken port into a `ConfigError` naming the variable, instead of a traceback
at the first request.
"""

from __future__ import annotations

import asyncio
import difflib
import errno
import os
import socket
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
import structlog
from pydantic import SecretStr
from redis.exceptions import RedisError

from orchestrator.core.errors import ConfigError
from orchestrator.core.settings import Settings

log = structlog.get_logger(__name__)

REDACTED = "***"
EXTRA_VARIABLES = frozenset({"PTU_TEST_REDIS_URL"})
"""`PTU_*` names read by something other than the settings (the test suite)."""


def known_variables(settings: Settings) -> set[str]:
    """Every `PTU_*` name a setting reads, plus the key variables deployments name."""
    names = {f"PTU_{field.upper()}" for field in Settings.model_fields}
    names |= {d.api_key_env for d in settings.deployments if d.api_key_env}
    return names | EXTRA_VARIABLES


def unknown_variables(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """One warning per `PTU_*` variable nothing reads, with the closest valid name."""
    known = known_variables(settings)
    out = []
    for name in sorted(n for n in environ if n.upper().startswith("PTU_")):
        if name.upper() in known:
            continue
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        out.append(f"{name} is not a known variable and is ignored{hint}")
    return out


def effective_configuration(settings: Settings) -> dict[str, Any]:
    """Every setting as the process uses it; keys, connection strings and API keys redacted."""
    doc = settings.model_dump(mode="python")
    for name, value in list(doc.items()):
        if isinstance(getattr(settings, name), SecretStr) or isinstance(value, SecretStr):
            doc[name] = REDACTED
    doc["api_keys"] = sorted(set(settings.api_keys.values()))  # the tenants, never the keys
    doc["redis_url"] = _without_password(settings.redis_url)
    return doc


def announce(
    settings: Settings, process: str, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Log the unknown-variable warnings and the effective configuration; the warnings."""
    warnings = unknown_variables(settings, os.environ if environ is None else environ)
    for text in warnings:
        log.warning("unknown_variable", process=process, problem=text)
    log.info("effective_configuration", process=process, **effective_configuration(settings))
    return warnings


async def check_redis(redis: aioredis.Redis, url: str, timeout_s: float = 5.0) -> None:
    """PING the server; ConfigError naming `PTU_REDIS_URL` and the cause when it fails."""
    try:
        async with _timeout(timeout_s):
            await redis.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        raise ConfigError(
            f"PTU_REDIS_URL: cannot reach {_without_password(url)}: {first_line(exc)}"
        ) from exc


def check_port(host: str, port: int, what: str) -> None:
    """ConfigError when `host:port` cannot be bound (taken, or not an address of this host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            cause = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ConfigError(f"{what}: cannot listen on {host}:{port}: {cause}") from exc


def first_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, else its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def credential_error(where: str, exc: BaseException) -> ConfigError:
    """The one-line start-up error for an upstream credential that cannot be obtained."""
    return ConfigError(
        f"upstream credential for {where}: cannot obtain an Entra ID token ({first_line(exc)}); "
        "set PTU_AZURE_OPENAI_API_KEY or the deployment's api_key_env"
    )


def _without_password(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0] if ":" in creds else ""
    return f"{scheme}://{user}:{REDACTED}@{host}" if user else f"{scheme}://{REDACTED}@{host}"


def _timeout(seconds: float) -> asyncio.Timeout:
    return asyncio.timeout(seconds)

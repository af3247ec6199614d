"""Start-up checks every process runs before it serves: fail early, in one line.

`announce` warns about `PTU_*` variables no setting reads (naming the closest valid
name: a typo is otherwise silently ignored) and logs `effective_configuration`, every
setting with secrets redacted. `check_port` turns a taken port into a `ConfigError`
naming the variable, instead of a traceback at the first request.

`check_redis` is what every verb that needs Redis runs first: within `REDIS_CHECK_S` it
says "Redis unreachable at HOST:PORT (connection refused)" in one line. It opens a
plain connection to the server first, because the clients retry a refused connection
for seconds (`redis_client.RETRY_BUDGET_S`, right for a restart, wrong for an operator
waiting on a typo) and then only say `TimeoutError`; the cause of the probe's failure
is the operator's answer. A server that accepts the connection is then PINGed.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import errno
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import structlog
from pydantic import SecretStr
from redis.exceptions import RedisError

from orchestrator.core.deployments import REDACTED, seed_urls, without_password
from orchestrator.core.errors import ConfigError, StoreUnavailable
from orchestrator.core.settings import Settings

log = structlog.get_logger(__name__)

REDIS_CHECK_S = 2.0
"""How long `check_redis` gives the server to accept a connection and answer PING."""
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
    doc["redis_url"] = without_password(settings.redis_url)
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


async def check_redis(redis: aioredis.Redis, url: str, timeout_s: float = REDIS_CHECK_S) -> None:
    """Connect and PING within `timeout_s`; StoreUnavailable in one line when it fails."""
    where = redis_address(url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        await _probe(url, timeout_s)
    except (OSError, TimeoutError) as exc:
        raise StoreUnavailable(
            f"Redis unreachable at {where} ({connect_failure(exc, timeout_s)}; PTU_REDIS_URL)"
        ) from exc
    try:
        async with asyncio.timeout(max(0.1, deadline - loop.time())):
            await redis.ping()
    except TimeoutError as exc:
        raise StoreUnavailable(
            f"Redis at {where} accepted the connection but did not answer PING within "
            f"{timeout_s:g} s (PTU_REDIS_URL)"
        ) from exc
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"Redis at {where}: {first_line(exc)} (PTU_REDIS_URL)") from exc


def redis_address(url: str) -> str:
    """`HOST:PORT` (or the socket's path) a Redis URL names, comma-separated for several
    seed nodes; never its credentials."""
    seeds = seed_urls(url)
    if len(seeds) > 1:
        return ",".join(redis_address(seed) for seed in seeds)
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{parts.port or 6379}"


def connect_failure(exc: BaseException, timeout_s: float) -> str:
    """Why a connection could not be opened, as an operator says it."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, FileNotFoundError):
        return "no such socket"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return first_line(exc)


async def _probe(url: str, timeout_s: float) -> None:
    """Open and close one plain connection to the server `url` names (to the first of its
    seed nodes that takes one; the last one's error when none does)."""
    seeds = seed_urls(url)
    for seed in seeds[:-1]:
        try:
            await _probe(seed, timeout_s / len(seeds))
        except (OSError, TimeoutError):
            continue
        return
    if len(seeds) > 1:
        url, timeout_s = seeds[-1], timeout_s / len(seeds)
    parts = urlsplit(url)
    async with asyncio.timeout(timeout_s):
        if parts.scheme == "unix":
            _, writer = await asyncio.open_unix_connection(parts.path)
        else:
            _, writer = await asyncio.open_connection(
                parts.hostname or "localhost", parts.port or 6379
            )
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:  # the server hung up first: it accepted, which is all the probe asks
        pass


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
        "set PTU_AZURE_OPENAI_API_KEY (empty counts as unset) or the deployment's api_key_env"
    )


@contextlib.contextmanager
def quiet_credential_chain() -> Iterator[None]:
    """Hold back azure-identity's own warnings while the start-up check tries a credential.

    `DefaultAzureCredential` logs every credential of its chain that failed, a dozen
    lines, before it raises; the check reports the failure itself, in one line
    (`credential_error`).
    """
    sdk = logging.getLogger("azure.identity")
    level = sdk.level
    sdk.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        sdk.setLevel(level)

"""A throwaway certificate authority and loopback server certificate for `--https`.

Azure SDK bearer-token policies refuse plain http, so the simulator serves TLS with a
`trustme` CA; clients trust it through `ca.pem` (e.g. azure-core's `connection_verify=`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog
import trustme

log = structlog.get_logger(__name__)

SERVER_IDENTITIES = ("127.0.0.1", "localhost")


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """Paths of the PEM files written by `write_self_signed`."""

    ca_pem: Path
    """The CA certificate clients must trust."""
    cert_pem: Path
    """The server certificate followed by its chain to the CA."""
    key_pem: Path
    """The server's private key (mode 0600)."""


def write_self_signed(directory: Path) -> TLSFiles:
    """Create a fresh CA and a server certificate for 127.0.0.1 and localhost in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(*SERVER_IDENTITIES)
    files = TLSFiles(
        ca_pem=directory / "ca.pem",
        cert_pem=directory / "cert.pem",
        key_pem=directory / "key.pem",
    )
    ca.cert_pem.write_to_path(files.ca_pem)
    files.cert_pem.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    fd = os.open(files.key_pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(leaf.private_key_pem.bytes())
    files.key_pem.chmod(0o600)
    log.info("tls_files_written", directory=str(directory), identities=list(SERVER_IDENTITIES))
    return files

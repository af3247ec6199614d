"""The streaming validation of an uploaded batch file, run in the offload process.

Reads the staged file line by line (never whole), with every check of
`ingress.batch.jsonl.scan`, and sums up what `batches.create` needs later without
reading the file again: the number of requests and, per deployment named, the
first line that names it (a low-priority batch refuses standard deployments).
Returns plain data (the error message or the summary), which crosses the process
boundary as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingress.http.errors import ApiError


@dataclass(frozen=True, slots=True)
class Summary:
    """What validation learnt about a good file."""

    lines: int
    deployments: dict[str, int] = field(default_factory=dict)
    """deployment -> the first line number naming it."""


def validate_file(path: str, deployments: list[str]) -> Summary | str:
    """The summary of a valid file, or the 400 message for the first bad line."""
    from ingress.batch.jsonl import scan  # imported in the child process

    used: dict[str, int] = {}
    count = 0
    try:
        with open(path, "rb") as handle:
            for line in scan(handle, deployments):
                count += 1
                used.setdefault(line.deployment, line.number)
    except ApiError as exc:
        return exc.message
    return Summary(count, used)


def warm() -> None:
    """Import the validation code in the offload process ahead of the first upload."""
    import ingress.batch.jsonl  # noqa: F401

"""The `ptu` command: one verb per process kind.

Each verb lives in its own module exposing `add_arguments(parser)` and
`run(args, settings) -> int`; only the chosen verb's module is imported, so
`ptu simulator` never loads the Azure SDKs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Protocol

from orchestrator.core.errors import ConfigError, MissingDependencyError, PTUError
from orchestrator.core.settings import Settings, load_settings
from orchestrator.core.variables import variables_read_by

VERBS: dict[str, tuple[str, str]] = {
    "simulator": ("simulator.cli", "run the Azure OpenAI PTU simulator"),
    "ingress": ("ingress.main", "run the HTTP gateway"),
    "worker": ("orchestrator.worker.main", "run the long-lived low-priority consumer"),
    "estimator": ("orchestrator.estimator.main", "fold token events into the utilisation estimate"),
    "up": ("devstack.up", "start the local stack in the foreground; Ctrl-C stops it"),
    "submit": ("orchestrator.cli.submit", "submit a Batch JSONL file through the ingress"),
    "result": ("orchestrator.cli.result", "print a queued request's result document"),
    "batches": ("orchestrator.cli.batches", "list, show or cancel the ingress's batches"),
    "status": ("orchestrator.cli.status", "live view of utilisation, concurrency and queues"),
    "usage": ("orchestrator.cli.usage", "token usage per tenant or deployment over a period"),
    "dlq": ("orchestrator.cli.dlq", "list, show, replay or purge dead-lettered requests"),
    "demo": ("bench.scenarios.demo", "embedded all-in-one demo run"),
    "bench": ("bench.cli", "run a benchmark scenario"),
}
NO_SETTINGS = {"simulator", "demo", "bench"}
PASSES_ENVIRONMENT = {"up"}
"""Verbs that hand every `PTU_*` variable on to the processes they start."""
CLOSED_PIPE_STATUS = 141
"""The exit status when the reader of stdout went away (`ptu … | head`): 128 + SIGPIPE,
what a shell reports for a command a closed pipe stopped."""


class VerbModule(Protocol):
    """What a verb module provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the verb's flags."""

    def run(self, args: argparse.Namespace, settings: Settings | None) -> int:
        """Run the verb; return the exit status."""


def version() -> str:
    """The installed distribution's version."""
    try:
        return metadata.version("ptu-orchestrator")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def environment_help(verb: str) -> str:
    """The help's closing paragraph: the `PTU_*` variables the verb reads, from the settings."""
    names = variables_read_by(verb)
    if not names:
        return "environment: reads no PTU_* variable"
    lines, line = ["environment (PTU_* variables read; see the README's Configuration):"], " "
    for name in names:
        if len(line) + len(name) + 1 > 78:
            lines.append(line)
            line = " "
        line += f" {name}"
    lines.append(line)
    if verb in PASSES_ENVIRONMENT:
        lines.append("and every PTU_* variable is passed on to the processes it starts")
    return "\n".join(lines)


def _top_help() -> str:
    lines = ["usage: ptu VERB [options]", "", "verbs:"]
    lines += [f"  {verb:<10} {text}" for verb, (_, text) in VERBS.items()]
    lines += ["", "ptu VERB --help shows a verb's options; ptu --version the version."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script `ptu`.

    A reader that closes stdout early (`ptu usage --format json | head`) ends the verb
    quietly: the rest of its output has nowhere to go, which is no error of ours. stdout
    is flushed here so a closed pipe shows now, not as a message at interpreter exit, and
    then pointed at the null device so nothing else tries to write to it (the way the
    Python documentation gives for SIGPIPE).
    """
    try:
        status = _run_verb(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return CLOSED_PIPE_STATUS
    return status


def _run_verb(argv: Sequence[str] | None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or args_in[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if args_in else 2
    if args_in[0] in ("-V", "--version"):
        print(f"ptu {version()}")
        return 0
    verb, rest = args_in[0], args_in[1:]
    if verb not in VERBS:
        print(f"ptu: unknown verb {verb!r} (one of: {', '.join(VERBS)})", file=sys.stderr)
        return 2
    module_name, text = VERBS[verb]
    try:
        module: VerbModule = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".", 1)[0]
        missing = MissingDependencyError.from_import(exc)
        if missing is not None:
            print(f"ptu {verb}: {missing}", file=sys.stderr)
        elif top in ("bench", "simulator", "devstack"):  # the production image: the runtime only
            print(f"ptu {verb}: this installation has no {top} package", file=sys.stderr)
        else:
            raise
        return 1
    parser = argparse.ArgumentParser(
        prog=f"ptu {verb}",
        description=text,
        epilog=environment_help(verb),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        settings = None if verb in NO_SETTINGS else load_settings()
        return module.run(args, settings)
    except ConfigError as exc:
        print(f"ptu {verb}: configuration error: {exc}", file=sys.stderr)
        return 2
    except PTUError as exc:
        print(f"ptu {verb}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

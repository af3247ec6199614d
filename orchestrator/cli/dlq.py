"""`ptu dlq list|show|replay|purge`: the dead-letter store (see `queues/dead_letter.py`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import redis.asyncio as aioredis

from orchestrator.core import redis_client, startup
from orchestrator.core.errors import ConfigError, PTUError
from orchestrator.core.pools import queue_key
from orchestrator.core.results import ResultStore
from orchestrator.core.settings import Settings
from orchestrator.queues.dead_letter import DeadLetter, DeadLetterStore
from orchestrator.queues.factory import make_queue


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ACTION [ID ...]`, `--deployment`, `--limit`, `--all`, `--json`."""
    parser.add_argument("action", choices=["list", "show", "replay", "purge"])
    parser.add_argument("ids", nargs="*", metavar="ID", help="entry ids or request ids")
    parser.add_argument("--deployment", action="append", metavar="NAME", help="(repeatable)")
    parser.add_argument("--limit", type=int, default=100, help="list: at most this many each")
    parser.add_argument("--all", action="store_true", help="replay / purge every entry")
    parser.add_argument("--json", action="store_true", help="list: one JSON object a line")


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Run one action against the chosen deployments' stores."""
    assert settings is not None
    names = stores_for(settings, args.deployment)
    if args.action in ("show", "replay", "purge") and not args.ids and not args.all:
        raise PTUError(f"dlq {args.action}: give entry or request ids, or --all")
    return asyncio.run(_run(args, settings, names))


def stores_for(settings: Settings, names: list[str] | None) -> list[str]:
    """The dead-letter stores `--deployment` names (every provisioned one's by default).

    A pool's dead letters are kept under the pool's name, like its queue: a pool's or a
    member's name means the pool's store. ConfigError for a name that is neither.
    """
    if not names:
        names = [d.name for d in settings.deployments if d.kind == "provisioned"]
    unknown = [n for n in names if settings.deployment(n) is None and n not in settings.pools]
    if unknown:
        raise ConfigError(
            f"--deployment: no deployment or pool named {unknown[0]!r} in PTU_DEPLOYMENTS"
        )
    keys_ = [queue_key(d) if (d := settings.deployment(n)) is not None else n for n in names]
    return list(dict.fromkeys(keys_))


async def _run(args: argparse.Namespace, settings: Settings, names: list[str]) -> int:
    redis = redis_client.connect_view(settings.redis)
    try:
        await startup.check_redis(redis, settings.redis_url)
        found = 0
        for name in names:
            store = DeadLetterStore(redis, name)
            letters = await _chosen(store, args)
            found += len(letters)
            if args.action == "list":
                _print_list(name, letters, await store.depth(), args.json)
            elif args.action == "show":
                for letter in letters:
                    print(
                        json.dumps(
                            {**letter.summary(), "message": json.loads(letter.raw or "null")},
                            indent=2,
                        )
                    )
            elif args.action == "replay":
                await _replay(settings, redis, store, letters)
            else:
                ids = None if args.all else [x.entry_id for x in letters]
                print(f"{name}: purged {await store.purge(ids)}")
        if args.ids and not found:
            print(f"dlq: no dead letter matches {' '.join(args.ids)}", file=sys.stderr)
            return 1
        return 0
    finally:
        await redis.aclose()


async def _chosen(store: DeadLetterStore, args: argparse.Namespace) -> list[DeadLetter]:
    if not args.ids:
        return await store.entries(count=args.limit if args.action == "list" else 100_000)
    out = []
    for ident in args.ids:
        letter = await store.find(ident)
        if letter is not None:
            out.append(letter)
    return out


def _print_list(name: str, letters: list[DeadLetter], depth: int, as_json: bool) -> None:
    if as_json:
        for letter in letters:
            print(json.dumps(letter.summary()))
        return
    print(f"{name}: {depth} dead letter(s)")
    for x in letters:
        print(f"  {x.entry_id}  {x.request_id or '-'}  deliveries={x.delivery_count}  {x.reason}")


async def _replay(
    settings: Settings, redis: aioredis.Redis, store: DeadLetterStore, letters: list[DeadLetter]
) -> None:
    queue = make_queue(settings, store.deployment, redis, "ptu-dlq")
    results = ResultStore(redis, settings.reply_ttl_s)
    try:
        for letter in letters:
            new = await store.replay(letter, queue, results, settings.default_ttl_s)
            print(f"{store.deployment}: replayed {letter.request_id} as {new.id}")
    finally:
        await queue.close()

"""The finaliser job: the batch's output and error files, then its final status.

Under the finalisation claim (one finaliser per batch), it streams the input file once
more, looks up each line's result in order (a line without one gets `result_missing`),
writes the two files to the file store and records them and the final status; nothing
is built by a GET. Run again after a crash, it starts over and writes the same files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import structlog

from ingress.batch.deadline.cost import Tally
from ingress.batch.expiry import output_expiry_s
from ingress.batch.job_context import JobContext, input_chunks
from ingress.batch.jsonl import output_line, succeeded
from ingress.batch.store import line_request_id

log = structlog.get_logger(__name__)


async def finalize(ctx: JobContext, batch_id: str, owner: str) -> str:
    """Write the output and error files and the final status (under the claim)."""
    if not await ctx.batches.claim_finalization(batch_id):
        return "claimed_elsewhere"
    f = await ctx.batches.fields(batch_id)
    tenant = f["tenant"]
    out_path, err_path = ctx.files.staged(), ctx.files.staged()
    counts = {"ok": 0, "errors": 0}
    used = ctx.settings.deployment(f.get("deployment", ""))
    tally = Tally(used.overflow if used is not None else ())
    try:
        with out_path.open("wb") as out, err_path.open("wb") as err:
            async for pending in input_chunks(ctx, f, owner):
                ids = [line_request_id(batch_id, i) for i, _ in pending]
                docs = await ctx.results.results(ids)
                for rid, (_, obj), doc in zip(ids, pending, docs, strict=True):
                    if doc is None:
                        line, ok = _missing(rid, str(obj.get("custom_id"))), False
                    else:
                        line, ok = output_line(doc), succeeded(doc)
                        tally.add(doc)
                    target = out if ok else err
                    target.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
                    counts["ok" if ok else "errors"] += 1
        update = {"status": f.get("final_status") or "completed"}
        update["usage_by_target"] = json.dumps(tally.as_dict())
        update[update["status"] + "_at"] = str(int(time.time()))
        for path, key, n in ((out_path, "output_file_id", counts["ok"]),
                             (err_path, "error_file_id", counts["errors"])):  # fmt: skip
            if n:
                name = f"{batch_id}_{'output' if key.startswith('output') else 'error'}.jsonl"
                saved = await ctx.files.save(
                    tenant, name, "batch_output", Path(path), output_expiry_s(f)
                )
                update[key] = saved["id"]
        await ctx.batches.update(batch_id, **update)
        await ctx.batches.deactivate(batch_id)
    finally:
        out_path.unlink(missing_ok=True)
        err_path.unlink(missing_ok=True)
    log.info("batch_finalized", batch_id=batch_id, ok=counts["ok"], errors=counts["errors"])
    return "finalized"


def _missing(request_id: str, custom_id: str) -> dict[str, Any]:
    return {
        "id": "batch_req_" + request_id.removeprefix("req_"),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": "result_missing", "message": "the line's result expired or was lost"},
    }

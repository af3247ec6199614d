"""The simulator's ASGI app: Azure OpenAI chat completions, responses, admin and metrics routes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from simulator.admin import admin_routes
from simulator.config import SimConfig
from simulator.management import management_routes
from simulator.monitor.recorder import MetricsRecorder
from simulator.monitor.routes import monitor_routes
from simulator.openai import chat, refusals, spillover, streaming, tokens
from simulator.openai.batches import BatchService, batch_routes
from simulator.openai.calls import (
    RESPONSES,
    ChatCall,
    ChatError,
    parse_body,
    parse_call,
    parse_responses_body,
)
from simulator.openai.deployments import Decision, Deployment
from simulator.openai.header import header_value
from simulator.openai.latency import generation_s
from simulator.openai.refusals import json_response
from simulator.openai.responses import ResponseWriter

log = structlog.get_logger(__name__)
SAMPLE_INTERVAL_S = 1.0
TICK_S = 0.1
"""Background calls and the header's history advance this often."""


class Simulator:
    """The deployments, metrics recorder and request handling behind the app."""

    def __init__(self, config: SimConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        now = clock()
        self.deployments = {
            spec.name: Deployment(
                spec,
                window_s=config.window_s,
                tbt_ms=config.tbt_ms,
                ttft_ms=config.ttft_ms,
                rng=random.Random(f"{config.seed}:{spec.name}"),
                now=now,
                utilisation_model=config.utilisation_model,
                utilisation_header=config.utilisation_header,
                header_lag_s=config.header_lag_s,
                header_smoothing_s=config.header_smoothing_s,
                background_share=config.background,
                noise_rng=random.Random(f"{config.seed}:{spec.name}:header"),
            )
            for spec in config.deployments
            if spec.kind != "globalbatch"
        }
        self.batches = BatchService(
            {s.name: s for s in config.deployments if s.kind == "globalbatch"},
            turnaround_s=config.batch_turnaround_s, failure_rate=config.batch_failure_rate,
            expiry_rate=config.batch_expiry_rate, seed=config.seed,
        )  # fmt: skip
        self._flex_rng = random.Random(f"{config.seed}:flex")
        self.flex = {"requests": 0, "refused": 0}
        self.recorder = MetricsRecorder(config.monitor_lag_s)
        self._ids = itertools.count(1)

    def authorised(self, request: Request) -> bool:
        """`api-key` header or Bearer token: the configured key, or any when none is set."""
        key = request.headers.get("api-key", "").strip()
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else ""
        if self.config.api_key is None:
            return bool(key or bearer)
        return self.config.api_key in (key, bearer)

    def headers(self, deployment: Deployment, decision: Decision | None) -> dict[str, str]:
        """Per-response headers: utilisation (provisioned) or remaining quota (standard)."""
        headers = {"apim-request-id": str(uuid.uuid4()), "x-ms-deployment-name": deployment.name}
        now = self.clock()
        if deployment.limiter is None:
            # a 429 reports the level it was refused at, so it never reads below 100 %
            throttled = decision is not None and decision.status == 429
            util = decision.utilization if throttled and decision else deployment.utilization(now)
            shown = deployment.reported_utilization(now, util)
            if shown is not None:
                headers["azure-openai-deployment-utilization"] = header_value(shown)
        else:
            toks, reqs = deployment.limiter.remaining(now)
            if decision is not None and decision.remaining_tokens is not None:
                toks, reqs = decision.remaining_tokens, decision.remaining_requests or 0
            headers["x-ratelimit-remaining-tokens"] = str(toks)
            headers["x-ratelimit-remaining-requests"] = str(reqs)
        return headers

    async def chat(self, request: Request, deployment_name: str | None) -> Response:
        """Handle one chat completions call (deployment from the path, or the body's model)."""
        if not self.authorised(request):
            return json_response(401, chat.error_body("401", chat.MSG_401), {})
        raw = await request.body()
        body: dict[str, Any] | None = None
        if deployment_name is None:  # v1 surface: the deployment is the body's model
            try:
                body = parse_body(raw)
            except ChatError as exc:
                return json_response(exc.status, exc.body, {})
            deployment_name = str(body.get("model") or "")
        deployment = self.deployments.get(deployment_name)
        if deployment is None:
            return json_response(404, chat.error_body("DeploymentNotFound", chat.MSG_404), {})
        try:
            body = body if body is not None else parse_body(raw)
            call = parse_call(request, body, self.config.seed, model=deployment.spec.model)
        except ChatError as exc:
            self.recorder.add_request(self.clock(), deployment.name, exc.status)
            return json_response(exc.status, exc.body, self.headers(deployment, None))
        return await self._serve(request, deployment, call)

    async def responses(self, request: Request) -> Response:
        """Handle one Responses API call: the body's `model` names the deployment."""
        if not self.authorised(request):
            return json_response(401, chat.error_body("401", chat.MSG_401), {})
        try:
            body = parse_responses_body(await request.body())
        except ChatError as exc:
            return json_response(exc.status, exc.body, {})
        deployment = self.deployments.get(body["model"])
        if deployment is None:
            return json_response(404, chat.error_body("DeploymentNotFound", chat.MSG_404), {})
        try:
            call = parse_call(
                request, body, self.config.seed, RESPONSES, model=deployment.spec.model
            )
        except ChatError as exc:
            self.recorder.add_request(self.clock(), deployment.name, exc.status)
            return json_response(exc.status, exc.body, self.headers(deployment, None))
        return await self._serve(request, deployment, call)

    async def _serve(self, request: Request, deployment: Deployment, call: ChatCall) -> Response:
        if deployment.limiter is not None and call.body.get("service_tier") == "flex":
            self.flex["requests"] += 1
            if self._flex_rng.random() < self.config.flex_contention:
                # Flex capacity is best effort: under contention the call is refused
                self.flex["refused"] += 1
                refused = Decision(429, deployment.utilization(self.clock()), None, 1.0)
                return refusals.throttled(
                    request, deployment, refused, self.headers(deployment, None)
                )
        decision = self._admit(deployment, call)
        if decision.status in spillover.TRIGGERS and deployment.meter is not None:
            requested = request.headers.get(spillover.SPILLOVER_REQUEST_HEADER)
            target = spillover.choose_target(deployment.spillover, requested)
            if target is not None:
                return await self._spill(request, deployment, decision, call, target)
        return await self._answer(request, deployment, decision, call)

    def _admit(self, deployment: Deployment, call: ChatCall) -> Decision:
        now = self.clock()
        decision = deployment.admit(
            now,
            prompt_tokens=call.prompt_tokens,
            output_tokens=tokens.admission_output_tokens(call.max_tokens),
            priority=call.priority,
        )
        self.recorder.add_request(now, deployment.name, decision.status)
        return decision

    async def _spill(
        self, request: Request, ptu: Deployment, refused: Decision, call: ChatCall, target: str
    ) -> Response:
        """Serve a refused call from the spillover target, else answer the refusal."""
        kinds = {name: d.spec.kind for name, d in self.deployments.items()}
        problem = spillover.target_problem(target, kinds)
        if problem is None:
            standard = self.deployments[target]
            decision = self._admit(standard, call)
            if decision.status == 200 and decision.ticket is not None:
                ptu.spilled(call.priority, refused.status)
                standard.served_spillover()
                spilled = {spillover.SPILLED_FROM_HEADER: ptu.name}
                return await self._answer(request, standard, decision, call, spilled)
            problem = str(decision.status)
        ptu.spillover_failed()
        failed = {spillover.SPILLOVER_ERROR_HEADER: problem}
        return await self._answer(request, ptu, refused, call, failed)

    async def _answer(
        self,
        request: Request,
        deployment: Deployment,
        decision: Decision,
        call: ChatCall,
        extra: dict[str, str] | None = None,
    ) -> Response:
        """The deployment's answer to a decided call; `extra` headers are added to it."""
        if decision.status == 429:
            headers = {**self.headers(deployment, decision), **(extra or {})}
            return refusals.throttled(request, deployment, decision, headers)
        if decision.status != 200 or decision.ticket is None:
            headers = {**self.headers(deployment, None), **(extra or {})}
            return await refusals.fault(decision, headers)
        if call.stream:
            headers = {**self.headers(deployment, decision), **(extra or {})}
            return self._stream(deployment, decision, call, headers)
        try:
            await asyncio.sleep(decision.ttft_s + generation_s(decision.tbt_ms, call.output_tokens))
        finally:
            self._complete(deployment, decision, call, call.completion_tokens)
        completion_id, created = self._new_id()
        n = call.completion_tokens
        headers = {**self.headers(deployment, decision), **(extra or {})}  # the level now
        if call.endpoint == RESPONSES:
            writer = self._response_writer(deployment, call, created)
            text = "".join(chat.completion_tokens_text(n, created)).lstrip()
            truncated = streaming.truncated(call, n)
            payload = writer.body(
                "incomplete" if truncated else "completed",
                text=text,
                output_tokens=n,
                truncated=truncated,
                completed_at=int(self.clock()),
            )
            return json_response(200, payload, headers)
        payload = chat.completion_body(
            completion_id=completion_id,
            created=created,
            model=deployment.spec.model,
            content="".join(chat.completion_tokens_text(n, created)).lstrip(),
            finish_reason="length" if streaming.truncated(call, n) else "stop",
            prompt_tokens=call.prompt_tokens,
            completion_tokens=n + call.reasoning_tokens,
            reasoning_tokens=call.reasoning_tokens,
            service_tier=chat.applied_tier(call.body, deployment.spec.kind),
        )
        return json_response(200, payload, headers)

    def _complete(self, deployment: Deployment, decision: Decision, call: ChatCall, n: int) -> None:
        """Reconcile a call that produced `n` visible tokens (and all its reasoning)."""
        assert decision.ticket is not None
        now = self.clock()
        generated = n + call.reasoning_tokens
        deployment.complete(now, decision.ticket, call.prompt_tokens, generated)
        self.recorder.add_tokens(now, deployment.name, call.prompt_tokens, generated)

    def _new_id(self) -> tuple[str, int]:
        return f"chatcmpl-sim{next(self._ids):012d}", int(self.clock())

    def _response_writer(
        self, deployment: Deployment, call: ChatCall, created: int
    ) -> ResponseWriter:
        return ResponseWriter(
            response_id=f"resp_sim{next(self._ids):012d}", created=created,
            model=deployment.spec.model, body=call.body, input_tokens=call.prompt_tokens,
            reasoning_tokens=call.reasoning_tokens, reasoning_effort=call.reasoning_effort,
        )  # fmt: skip

    def _stream(
        self, deployment: Deployment, decision: Decision, call: ChatCall, headers: dict[str, str]
    ) -> Response:
        headers = {**headers, "cache-control": "no-cache"}
        completion_id, created = self._new_id()

        def done(emitted: int) -> None:
            self._complete(deployment, decision, call, emitted)

        body: AsyncIterator[bytes]
        if call.endpoint == RESPONSES:
            writer = self._response_writer(deployment, call, created)
            body = streaming.response_events(writer, decision, call, created, self.clock, done)
        else:
            chunks = chat.ChunkWriter(
                completion_id=completion_id, created=created,
                model=deployment.spec.model, with_usage=call.include_usage,
                service_tier=chat.applied_tier(call.body, deployment.spec.kind),
            )  # fmt: skip
            body = streaming.chat_chunks(chunks, decision, call, created, done)
        return StreamingResponse(body, headers=headers, media_type="text/event-stream")

    def tick(self, now: float) -> None:
        """Advance background traffic and header history; record background calls."""
        for deployment in self.deployments.values():
            for status, call in deployment.tick(now):
                self.recorder.add_request(now, deployment.name, status)
                if status == 200:
                    self.recorder.add_tokens(
                        now, deployment.name, call.prompt_tokens, call.completion_tokens
                    )

    def sample(self, now: float) -> None:
        """One Azure Monitor utilisation sample (the truth) per provisioned deployment."""
        for deployment in self.deployments.values():
            if deployment.meter is not None:
                self.recorder.sample(now, deployment.name, deployment.utilization(now) * 100.0)

    async def sample_forever(self) -> None:
        """Tick every `TICK_S`; feed the metrics recorder once every `SAMPLE_INTERVAL_S`."""
        # counted in ticks, not by the injected clock, which tests may hold still
        ticks_per_sample = round(SAMPLE_INTERVAL_S / TICK_S)
        for count in itertools.count():
            now = self.clock()
            self.tick(now)
            if count % ticks_per_sample == 0:
                self.sample(now)
            await asyncio.sleep(TICK_S)


def create_app(config: SimConfig, *, clock: Callable[[], float] = time.time) -> Starlette:
    """The simulator as an ASGI app; `app.state.simulator` is the `Simulator` behind it."""
    sim = Simulator(config, clock)

    async def deployment_chat(request: Request) -> Response:
        return await sim.chat(request, request.path_params["deployment"])

    async def v1_chat(request: Request) -> Response:
        return await sim.chat(request, None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sampler = asyncio.create_task(sim.sample_forever())
        log.info("simulator_started", deployments=list(sim.deployments), seed=config.seed)
        try:
            yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    routes = [
        Route(
            "/openai/deployments/{deployment}/chat/completions", deployment_chat, methods=["POST"]
        ),
        Route("/openai/v1/chat/completions", v1_chat, methods=["POST"]),
        Route("/openai/v1/responses", sim.responses, methods=["POST"]),
        Route("/openai/responses", sim.responses, methods=["POST"]),
        *admin_routes(
            sim.deployments,
            clock,
            sim.recorder,
            extra=lambda: {"flex": dict(sim.flex), "global_batch": sim.batches.state()},
        ),
        *batch_routes(sim.batches, clock, sim.authorised),
        *monitor_routes(sim.recorder, config.resource_id, clock),
        *management_routes(sim.deployments, config.resource_id),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.simulator = sim
    return app

"""The worker's handling of one queued request: `handler` (the `Dispatcher`), `call` (one call,
its pre-call step `Caller.prepare`), `gate` (slot and breaker around each attempt), `slots`
(the `SlotHolder`), `settle` (result, then ack or dead-letter), `parts` (what it is built from)."""

from orchestrator.worker.dispatch.handler import Dispatcher
from orchestrator.worker.dispatch.parts import Delivering, DispatchConfig, Gates, Reporting

__all__ = ["Delivering", "DispatchConfig", "Dispatcher", "Gates", "Reporting"]

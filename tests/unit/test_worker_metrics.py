"""The worker's Prometheus metrics, read back from their registry."""

from __future__ import annotations

from orchestrator.utilisation.base import Calibration, Reading
from orchestrator.worker.metrics import WorkerMetrics


def test_metrics_record_throttle_results_calls_tokens_and_lag() -> None:
    m = WorkerMetrics()
    m.observe_throttle("d", 5, 3, Reading(0.42, 100.0, "estimate"), now=101.5)
    m.observe_throttle("e", 0, 0, None, now=101.5)
    m.result("d", "completed")
    m.result("d", "completed")
    m.result("d", "failed")
    m.call("d", 200, 0.3)
    m.call("d", 429, 0.01)
    m.usage("d", 12, 7)
    m.lag("d", 4.0)
    m.lag("d", -1.0)  # clock skew never records a negative lag

    def value(name: str, **labels: str) -> float | None:
        return m.registry.get_sample_value(name, labels)

    assert value("ptu_worker_concurrency_limit", deployment="d") == 5
    assert value("ptu_worker_in_flight", deployment="d") == 3
    assert value("ptu_worker_utilisation_ratio", deployment="d") == 0.42
    assert value("ptu_worker_utilisation_age_seconds", deployment="d") == 1.5
    assert value("ptu_worker_utilisation_ratio", deployment="e") is None
    assert value("ptu_worker_results_total", deployment="d", status="completed") == 2
    assert value("ptu_worker_results_total", deployment="d", status="failed") == 1
    assert value("ptu_worker_upstream_calls_total", deployment="d", status_code="429") == 1
    assert value("ptu_worker_upstream_latency_seconds_count", deployment="d") == 2
    assert value("ptu_worker_tokens_total", deployment="d", kind="completion") == 7
    low = {"deployment": "d", "class": "low"}
    assert value("ptu_worker_queue_lag_seconds_sum", **low) == 4.0
    assert value("ptu_worker_queue_lag_seconds_count", **low) == 2
    m.lag("d", 7.0, "batch")  # each queued class apart
    assert value("ptu_worker_queue_lag_seconds_sum", **{**low, "class": "batch"}) == 7.0
    assert value("ptu_worker_queue_lag_seconds_count", **low) == 2


def test_each_instance_has_its_own_registry() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.result("d", "completed")
    assert (
        b.registry.get_sample_value(
            "ptu_worker_results_total", {"deployment": "d", "status": "completed"}
        )
        is None
    )
    assert repr(a).startswith("<WorkerMetrics collectors=")


def test_metrics_show_the_calibration() -> None:
    m = WorkerMetrics()
    cal = Calibration(
        model=0.3, correction=0.25, correction_age_s=0.5, observed=0.56, observed_age_s=0.5,
        model_kind="lag 3s", unseen=0.25, uncertainty=0.02,
    )  # fmt: skip
    m.observe_throttle("d", 5, 3, Reading(0.55, 100.0, "estimate", cal), now=101.0)
    m.observe_throttle("e", 5, 3, Reading(0.2, 100.0, "estimate"), now=101.0)  # calibration off

    def value(name: str, deployment: str) -> float | None:
        return m.registry.get_sample_value(name, {"deployment": deployment})

    assert value("ptu_worker_utilisation_model_ratio", "d") == 0.3
    assert value("ptu_worker_utilisation_observed_ratio", "d") == 0.56
    assert value("ptu_worker_utilisation_correction_ratio", "d") == 0.25
    assert value("ptu_worker_utilisation_correction_age_seconds", "d") == 0.5
    assert value("ptu_worker_unseen_traffic_ratio", "d") == 0.25
    assert value("ptu_worker_utilisation_uncertainty_ratio", "d") == 0.02
    assert value("ptu_worker_utilisation_header_delay_seconds", "d") == 3.0
    assert value("ptu_worker_utilisation_model_ratio", "e") is None

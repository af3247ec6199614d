"""OpenTelemetry for every process: the contract (`base`), `otel`, `factory`."""

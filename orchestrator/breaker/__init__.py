"""The circuit breaker per upstream deployment: a pure state machine and its Redis-shared twin."""

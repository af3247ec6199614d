"""The HTTP gateway: priority routing, high-priority proxy, low-priority enqueue, batches.

Entry points: `ingress.app.create_app(settings)` (the ASGI app),
`ingress.server.IngressThread` (tests, benchmarks) and `ptu ingress` (`ingress.main`).
"""

"""The local runtime: an embedded Redis (`embedded_redis`) or Redis Cluster
(`embedded_cluster`), the supervisor of a whole local stack (`stack`: Redis, simulator,
ingress, worker as processes) and `ptu up` on it (`up`). The tests, `ptu demo` and
`ptu bench` run on it; the production image carries none of it."""

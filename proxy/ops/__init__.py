"""Operating poolproxy: Prometheus metrics, the admin HTTP server and status page, and the
PgBouncer-compatible admin console."""

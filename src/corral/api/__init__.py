"""The HTTP service: board callbacks, the operator API, /metrics and health checks."""

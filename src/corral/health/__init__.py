"""Health checks (docs/health.md): definitions per board type, and the rules
that judge a check's result. The board's check path and the pass that runs
them are not wired in yet."""

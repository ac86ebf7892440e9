"""Prometheus metrics.

Gauges of machines per state are computed with one ``GROUP BY`` at scrape
time, so every engine process reports the same, correct numbers however many
share the database. Counters and histograms count what this process did.
Metric names follow Prometheus conventions (``_total`` counters, base units).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from corral.engine.core import Engine, Observer
from corral.machines import MachineSet
from corral.webhooks import list_subscriptions


class StateCollector(Collector):
    """``corral_machines``, ``corral_failed_machines`` and the operation queue.

    Machines per state come from the aggregate the workers recount every
    ``state_count_interval`` seconds (a few rows, whatever the fleet's size);
    when it is older than ``counts_max_age`` (no worker runs) they are
    counted at scrape time instead. ``corral_machine_counts_age_seconds``
    says how old the figures are.
    """

    def __init__(self, engine: Engine, *, counts_max_age: float = 30.0) -> None:
        self.engine = engine
        self.counts_max_age = counts_max_age

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts, counts_age = self.engine.sweeper.state_counts(max_age=self.counts_max_age)
        queued, oldest = self.engine.outbox.queue()
        machines = GaugeMetricFamily("corral_machines", "Machines per kind and state.",
                                     labels=["kind", "state"])
        failed = GaugeMetricFamily("corral_failed_machines",
                                   "Machines in a failed state, waiting for an operator.",
                                   labels=["kind"])
        failed_by_kind = {kind: 0 for kind in self.engine.machines.kinds()}
        for kind, state, n in counts:
            machines.add_metric([kind, state], n)
            if kind in self.engine.machines and self.engine.machines[kind].is_failed(state):
                failed_by_kind[kind] += n
        for kind, n in sorted(failed_by_kind.items()):
            failed.add_metric([kind], n)
        depth = GaugeMetricFamily("corral_operations_queued",
                                  "Operations pending or running.")
        depth.add_metric([], queued)
        age = GaugeMetricFamily("corral_operations_oldest_age_seconds",
                                "Age of the oldest pending or running operation.")
        age.add_metric([], (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0)
        counted = GaugeMetricFamily("corral_machine_counts_age_seconds",
                                    "How old the machines-per-state figures are (0: counted "
                                    "for this scrape).")
        counted.add_metric([], counts_age or 0.0)
        stuck = GaugeMetricFamily(
            "corral_state_oldest_seconds",
            "Seconds the machine longest in each state has been there (stuck work: "
            "corral_state_oldest_seconds{state=\"pxe_booting\"} > 3600).",
            labels=["kind", "state"])
        ages = self.engine.sweeper.oldest_in_state(max_age=self.counts_max_age)
        for kind, state, seconds in ages:
            stuck.add_metric([kind, state], seconds)
        hooks = GaugeMetricFamily("corral_webhook_failing",
                                  "1 for a webhook subscription marked failing.",
                                  labels=["webhook"])
        behind = GaugeMetricFamily("corral_webhook_failures",
                                   "Failed deliveries in a row, per webhook subscription.",
                                   labels=["webhook"])
        for hook in list_subscriptions(self.engine.store):
            hooks.add_metric([hook["name"]], 1.0 if hook["status"] == "failing" else 0.0)
            behind.add_metric([hook["name"]], float(hook["failures"]))
        yield from (machines, failed, depth, age, counted, stuck, hooks, behind)
        if "board" in self.engine.machines and \
                "judging" in self.engine.machines["board"].definition.states:
            yield from health_metrics(self.engine, counts)


# Boards by health, from the board machine's states.
HEALTH_OF_STATE = {"ready": "proven", "leased": "proven", "check_queued": "checking",
                   "checking": "checking", "judging": "checking", "suspect": "suspect",
                   "unknown": "unknown", "failed_health": "failed"}


def health_metrics(engine: Engine, counts: Any) -> Iterator[GaugeMetricFamily]:
    """Checks by check, decision and blame; boards by health; pass rates over
    the last day per board and per check; degraded equipment."""
    from corral.health.service import summary

    doc = summary(engine, engine.clock() - timedelta(days=1))
    checks = GaugeMetricFamily("corral_health_checks", "Judged health checks kept (pruned "
                               "with the history), by check, decision and blame.",
                               labels=["check", "decision", "blame"])
    for check, decision, blame, n in doc["tally"]:
        checks.add_metric([check, decision, blame], n)
    boards = GaugeMetricFamily("corral_boards_health", "Boards by health: proven (ready or "
                               "leased), checking, suspect, unknown, failed.", labels=["health"])
    by = dict.fromkeys(("proven", "checking", "suspect", "unknown", "failed"), 0)
    for kind, state, n in counts:
        if kind == "board" and state in HEALTH_OF_STATE:
            by[HEALTH_OF_STATE[state]] += n
    for health, n in by.items():
        boards.add_metric([health], n)
    per_board = GaugeMetricFamily("corral_health_board_pass_rate", "Share of a board's checks "
                                  "that passed over the last day.", labels=["board"])
    for board, (passed, judged) in sorted(doc["boards"].items()):
        per_board.add_metric([board], passed / judged)
    per_check = GaugeMetricFamily("corral_health_check_pass_rate", "Share of a check's runs "
                                  "that passed over the last day.", labels=["check"])
    for check, (passed, judged) in sorted(doc["checks"].items()):
        per_check.add_metric([check], passed / judged)
    degraded = GaugeMetricFamily("corral_equipment_degraded", "1 for shared equipment (a power "
                                 "controller, the netboot server) found degraded.",
                                 labels=["equipment"])
    for equipment in doc["degraded"]:
        degraded.add_metric([equipment], 1.0)
    waiting = GaugeMetricFamily("corral_health_boards", "Boards suspect, unknown or failed "
                                "by their health check (the board type), for alerts per type.",
                                labels=["check", "state"])
    for check, state, n in doc["by_check"]:
        waiting.add_metric([check, state], n)
    yield from (checks, boards, per_board, per_check, degraded, waiting)


class PrometheusObserver(Observer):
    """Counts what the engine does in this process."""

    def __init__(self, registry: CollectorRegistry, machines: MachineSet) -> None:
        self._machines = machines
        self.events = Counter("corral_events", "Events by kind, event, source and outcome.",
                              ["kind", "event", "source", "outcome"], registry=registry)
        self.timeouts = Counter("corral_timeouts", "Timeouts fired.", ["kind"],
                                registry=registry)
        self.operations = Counter("corral_operations", "Operations finished, by outcome.",
                                  ["kind", "outcome"], registry=registry)
        self.commit_seconds = Histogram(
            "corral_event_commit_seconds",
            "From taking an event (or a batch of them) to its commit.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=registry)
        self.timeout_lag = Histogram(
            "corral_timeout_lag_seconds", "How long after its deadline a timeout fired.",
            ["kind"], buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=registry)

    def event(self, kind: str, event: str, source: str, outcome: str) -> None:
        # Refused events may carry any name a client typed; keep the label set bounded.
        known = kind in self._machines and event in self._machines[kind].triggers
        self.events.labels(kind, event if known else "other", source, outcome).inc()

    def committed(self, seconds: float, events: int) -> None:
        self.commit_seconds.observe(seconds)

    def timeout(self, kind: str, lag_seconds: float) -> None:
        self.timeouts.labels(kind).inc()
        self.timeout_lag.labels(kind).observe(max(lag_seconds, 0.0))

    def operation(self, kind: str, outcome: str) -> None:
        self.operations.labels(kind, outcome).inc()


def build_registry(engine: Engine, *, multiprocess: bool = False,
                   counts_max_age: float = 30.0) -> CollectorRegistry:
    """The registry ``/metrics`` shows: the state gauges, and the counters and
    histograms of a Prometheus observer it installs on the engine.

    With ``multiprocess`` (several API processes, PROMETHEUS_MULTIPROC_DIR
    set), the counters and histograms are read from every process's files.
    """
    registry = CollectorRegistry()
    registry.register(StateCollector(engine, counts_max_age=counts_max_age))
    if not multiprocess:
        engine.observer = PrometheusObserver(registry, engine.machines)
        return registry
    from prometheus_client import multiprocess as mp

    engine.observer = PrometheusObserver(CollectorRegistry(), engine.machines)
    mp.MultiProcessCollector(registry)
    return registry

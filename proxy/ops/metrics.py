"""Prometheus metrics of one proxy process, in a registry of its own (no global state).

Actions are counted from the log as the tail reads it (so actions other processes write to the
same log count too), each time an entry moves one into a state; latencies come from admission
(deciding and logging an action) and from the store's writer (each fsync'd commit); gauges read
the log when scraped. Every label set is bounded: states and effects are Airlock's own words,
and a rule or protocol label is a name from the rules or from Airlock, at most
`Names.extra` of them beyond the rules in force, after which it reads `other`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from proxy.core.proposals import ModelAnswer
from proxy.core.reload import RulesReloader
from proxy.core.tracking import ModelCall
from store import Entry, Log, State, StoreError, Usage

from .logroom import NEARLY_FULL, nearly_full

if TYPE_CHECKING:
    from .retention import Retainer
    from .shipping import Shipper  # loads OpenTelemetry: only when the log is shipped

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# From a cache hit to a held action's wait: fractions of a millisecond up to a minute.
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A hold: from a quick approval to a timeout past an hour.
HOLD_SECONDS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
# An fsync: from a fast SSD's fraction of a millisecond to a stalled disk's seconds.
COMMIT_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)

ENDED = frozenset({State.COMMITTED, State.FAILED, State.DENIED, State.ABORTED, State.REPLAYED})
REMEMBERED = 100_000  # open actions whose labels are kept, so their later entries need no read


class Names:
    """A bounded set of label values: `known()` names always pass, and at most `extra` others."""

    def __init__(self, known: Callable[[], frozenset[str]], extra: int):
        self._known = known
        self._extra: set[str] = set()
        self._room = extra

    def label(self, name: object) -> str:
        """`name` as a label value: itself if known or there is room, else `other`."""
        if not isinstance(name, str) or not name:
            return ""
        if name in self._extra or name in self._known():
            return name
        if len(self._extra) < self._room:
            self._extra.add(name)
            return name
        return "other"


Labels = tuple[str, str, str]  # effect, protocol, rule


class _Labels:
    """The labels and opening time of the actions the tail has seen open (bounded), read from
    the log for one it has not."""

    def __init__(self, log: Log, rules: Names, protocols: Names):
        self.log = log
        self.rules = rules
        self.protocols = protocols
        self._open: dict[int, tuple[Labels, float]] = {}

    def _known(self, entry: Entry) -> tuple[Labels, float] | None:
        action_id = entry.action
        assert action_id is not None
        known = self._open.get(action_id)
        if known is not None:
            return known
        summary: dict[str, Any] | None = entry.summary if "effect" in entry.summary else None
        opened = entry.ts
        if summary is None:
            try:
                summary = self.log.action(action_id)
            except StoreError:
                summary = None
            if summary is None:
                return None
            opened = float(summary.get("ts") or entry.ts)
        labels = (
            str(summary.get("effect") or ""),
            self.protocols.label(summary.get("protocol")),
            self.rules.label(summary.get("rule")),
        )
        return labels, opened

    def opened(self, entry: Entry) -> float | None:
        """When the entry's action was opened (its first entry's time)."""
        known = self._known(entry)
        return None if known is None else known[1]

    def of(self, entry: Entry) -> Labels | None:
        """The labels of the action an entry moves; forgotten once it has ended."""
        known = self._known(entry)
        if known is None:
            return None
        action_id = entry.action
        assert action_id is not None
        if entry.state in ENDED:
            self._open.pop(action_id, None)
        else:
            if len(self._open) >= REMEMBERED and action_id not in self._open:
                self._open.pop(next(iter(self._open)))
            self._open[action_id] = known
        return known[0]


class _Scraped(Collector):
    """What is read when Prometheus scrapes: held actions and the freeze (from the log), rule
    reloads and their failures (from the reloader)."""

    def __init__(self, log: Log, reloader: RulesReloader):
        self.log = log
        self.reloader = reloader

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "airlock_held_actions",
            "Actions held for votes now (the log's states index)",
            self.log.count(State.HELD),
        )
        yield GaugeMetricFamily(
            "airlock_frozen",
            "1 while the log is frozen (no write or destroy goes out), else 0",
            _frozen(self.log),
        )
        age = _checkpoint_age(self.log)
        if age is not None:
            yield GaugeMetricFamily(
                "airlock_checkpoint_age_seconds", "Seconds since the last signed checkpoint was written", age
            )
        yield from _room(self.log.usage())
        yield CounterMetricFamily(
            "airlock_rules_reloads", "Rule reloads that put new rules in force", self.reloader.reloads
        )
        yield CounterMetricFamily(
            "airlock_rules_reload_failures",
            "Rule reloads refused (invalid files: the previous rules stayed)",
            self.reloader.failures,
        )


def _room(usage: Usage) -> Iterator[Metric]:
    """The log's size and room (store/usage.py: a few statistics, whatever the log's length)."""
    yield GaugeMetricFamily(
        "airlock_log_size_bytes", "Bytes of the log in use (its pages, not the file)", usage.used_bytes
    )
    yield GaugeMetricFamily("airlock_log_max_bytes", "The log's limit (--log-max-size)", usage.max_bytes)
    yield GaugeMetricFamily("airlock_log_entries", "Entries the log holds", usage.entries)
    age = max(time.time() - usage.oldest_ts, 0.0) if usage.oldest_ts is not None else 0.0
    yield GaugeMetricFamily(
        "airlock_log_oldest_entry_age_seconds", "Age of the oldest entry the log holds", age
    )
    yield GaugeMetricFamily(
        "airlock_log_nearly_full",
        f"1 while the log uses {int(NEARLY_FULL * 100)}% of --log-max-size or more, else 0",
        int(nearly_full(usage)),
    )


def _frozen(log: Log) -> int:
    return 0 if log.frozen() is None else 1


def _checkpoint_age(log: Log) -> float | None:
    try:
        last = log.last_checkpoint()
    except StoreError:
        return None  # a damaged record is verify's to report, not a scrape's
    return None if last is None else max(time.time() - last.ts, 0.0)


class _Shipping(Collector):
    """How far shipping to the collector has come (read when Prometheus scrapes)."""

    def __init__(self, shipper: Shipper):
        self.shipper = shipper

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "airlock_export_lag_entries",
            "Entries of the log not yet accepted by the OTLP collector (head minus the shipped cursor)",
            self.shipper.lag(),
        )
        yield CounterMetricFamily(
            "airlock_export_shipped_entries", "Entries the OTLP collector accepted", self.shipper.shipped
        )
        yield CounterMetricFamily(
            "airlock_export_failures",
            "Exports to the OTLP collector that failed (their entries are sent again)",
            self.shipper.failures,
        )


class _Retention(Collector):
    """What retention has pruned (read when Prometheus scrapes)."""

    def __init__(self, retainer: Retainer):
        self.retainer = retainer

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "airlock_log_pruned_bytes",
            "Bytes retention removed from the log (entries and index records), as its prune entries say",
            self.retainer.pruned_bytes,
        )
        yield CounterMetricFamily(
            "airlock_log_pruned_entries",
            "Entries retention removed from the log",
            self.retainer.pruned_entries,
        )


class Metrics:
    """The metrics of one proxy process and the registry they are exposed from."""

    def __init__(self, log: Log, reloader: RulesReloader):
        self.registry = CollectorRegistry()
        rules = Names(lambda: frozenset(r.id for r in reloader.current.rules), extra=32)
        self._labels = _Labels(log, rules, Names(frozenset, extra=16))
        self._voters = Names(frozenset, extra=64)
        self._votes = Names(frozenset, extra=8)  # approve, deny; commit, abort
        self.actions = Counter(
            "airlock_actions",
            "Actions entering a state, by state, effect, protocol and deciding rule",
            ["state", "effect", "protocol", "rule"],
            registry=self.registry,
        )
        self.decisions = Histogram(
            "airlock_decision_seconds",
            "From a decided action reaching admission to its answer: logged and let go, refused, "
            "or (held) decided by votes",
            ["verdict"],
            buckets=SECONDS,
            registry=self.registry,
        )
        self.votes = Counter(
            "airlock_votes",
            "Votes on held actions, by voter and vote (approve, deny)",
            ["voter", "vote"],
            registry=self.registry,
        )
        self.holds = Histogram(
            "airlock_hold_decision_seconds",
            "From an action's hold to its decision, by decision (commit, abort)",
            ["decision"],
            buckets=HOLD_SECONDS,
            registry=self.registry,
        )
        self.commits = Histogram(
            "airlock_log_commit_seconds",
            "Durable commits of the log by this process (fsync included)",
            buckets=COMMIT_SECONDS,
            registry=self.registry,
        )
        self.commit_failures = Counter(
            "airlock_log_commit_failures", "Commits of the log that failed as a whole", registry=self.registry
        )
        self.checkpoint_send_failures = Counter(
            "airlock_checkpoint_send_failures",
            "Checkpoints --checkpoint-to could not deliver on a try (a URL is tried again)",
            registry=self.registry,
        )
        self._agents = Names(frozenset, extra=64)
        self._providers = Names(frozenset, extra=16)
        self._models = Names(frozenset, extra=64)
        self.tokens = Counter(
            "airlock_model_tokens",
            "Tokens model calls used as their answers report them, by agent, provider, model and "
            "kind (input, output)",
            ["agent", "provider", "model", "kind"],
            registry=self.registry,
        )
        self.unauthorized = Counter(
            "airlock_control_unauthorized",
            "Control API requests refused for a missing or wrong token (logged or not)",
            registry=self.registry,
        )
        self.registry.register(_Scraped(log, reloader))
        log.observe_commits(self.committed)

    def read(self, batch: list[Entry]) -> None:
        """Count the actions these new entries move (a Tail reader)."""
        for entry in batch:
            if entry.action is None:
                continue
            if entry.kind == "vote":
                voter, vote = entry.data.get("voter"), entry.data.get("vote")
                self.votes.labels(self._voters.label(voter), self._votes.label(vote)).inc()
            elif entry.kind == "decision" and (opened := self._labels.opened(entry)) is not None:
                decision = self._votes.label(entry.data.get("decision"))
                self.holds.labels(decision).observe(max(entry.ts - opened, 0.0))
            if entry.state is None:
                continue
            labels = self._labels.of(entry)
            if labels is not None:
                self.actions.labels(entry.state, *labels).inc()

    def watch_retention(self, retainer: Retainer) -> None:
        """Expose what retention has pruned since this process started."""
        self.registry.register(_Retention(retainer))

    def watch_shipping(self, shipper: Shipper) -> None:
        """Expose how far `shipper` has shipped the log: its lag, entries shipped, failures."""
        self.registry.register(_Shipping(shipper))

    def committed(self, seconds: float, error: StoreError | None) -> None:
        """Time one commit of the writer (a commit observer)."""
        if error is None:
            self.commits.observe(seconds)
        else:
            self.commit_failures.inc()

    def decided(self, verdict: str, seconds: float) -> None:
        """Time one admission (a decision observer)."""
        self.decisions.labels(verdict).observe(seconds)

    def used(self, call: ModelCall, answer: ModelAnswer) -> None:
        """Count the tokens one model call's answer reports (a usage observer)."""
        if answer.usage is None or answer.usage.estimated:
            return  # the metric counts what answers report
        model = answer.model or call.inference.model
        agent, provider = self._agents.label(call.agent), self._providers.label(call.inference.provider)
        labels = (agent, provider, self._models.label(model))
        self.tokens.labels(*labels, "input").inc(answer.usage.input_tokens)
        self.tokens.labels(*labels, "output").inc(answer.usage.output_tokens)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes (reads the log: call it off the event loop)."""
        return generate_latest(self.registry)

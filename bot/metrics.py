"""Prometheus metrics of the bot, on a registry of its own (one per app, so tests can build many apps).

Served at ``/metrics`` by ``bot/api.py``. Label values are bounded sets (route templates, status codes,
stable error codes), never user input.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    """The bot's counters and histograms."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "keyturn_http_requests_total", "HTTP requests served", ["route", "status"], registry=r
        )
        self.http_latency = Histogram(
            "keyturn_http_request_seconds",
            "HTTP request latency",
            ["route"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
        )
        self.requests_created = Counter(
            "keyturn_requests_created_total", "Deploy requests created", ["environment"], registry=r
        )
        self.approvals = Counter("keyturn_approvals_total", "Approvals counted", ["environment"], registry=r)
        self.refusals = Counter("keyturn_refusals_total", "Actions refused", ["code"], registry=r)
        self.decisions = Counter(
            "keyturn_decisions_total", "Requests reaching a final state", ["status"], registry=r
        )
        self.sign_failures = Counter(
            "keyturn_sign_failures_total", "Signer refusals or outages at signing", ["code"], registry=r
        )
        self.sign_latency = Histogram(
            "keyturn_sign_seconds", "Time to obtain a receipt from the signer", registry=r
        )
        self.outcome_record_failures = Counter(
            "keyturn_outcome_record_failures_total",
            "Denials, cancels and expiries the signer did not record (yet): outage or refusal",
            ["code"],
            registry=r,
        )
        self.card_post_failures = Counter(
            "keyturn_card_post_failures_total", "Failed attempts to post a card", registry=r
        )
        self.callback_attempts = Counter(
            "keyturn_callback_attempts_total", "CI callback delivery attempts", ["outcome"], registry=r
        )
        self.long_polls = Gauge(
            "keyturn_long_polls",
            "Status reads waiting for a change (?wait=), i.e. CI jobs waiting",
            registry=r,
        )
        self.callback_dead_letters = Counter(
            "keyturn_callback_dead_letters_total",
            "Callbacks given up after the last attempt (by this replica)",
            registry=r,
        )
        # Shared by every replica (read from Redis by each replica's delivery loop).
        self.callbacks_due = Gauge("keyturn_callbacks_due", "Callbacks owed (outbox backlog)", registry=r)
        self.callbacks_dead = Gauge(
            "keyturn_callbacks_dead", "Callbacks dead-lettered (outbox dead-letter index)", registry=r
        )
        self.background_tasks = Gauge(
            "keyturn_background_tasks", "Background tasks in flight (card posting, callbacks)", registry=r
        )

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)

"""What the ingest tells Prometheus (`/metrics`) and a load balancer or systemd (`/health`).

Counters are updated by the ingest as each batch commits (`IngestMetrics.batch`); what lives
in the database (each device's lag: now minus the newest detection the server holds, and
whether its last status said online) is read at scrape time, so a scrape always shows the
database as it is, whichever worker wrote it.

Served by `MetricsServer` (the standard library's threading HTTP server) from the ingest
process: `explorer-server ingest --metrics-port 9108`. The researchers' API (a later issue)
mounts the same registry.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from device.domain import utc_now

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""From a message's arrival off the wire to its commit: milliseconds when all is well, seconds
under a backlog, tens of seconds while the database is failing."""
REFUSAL_KINDS = 20
"""Distinct refusal reasons kept as label values; the rest count as "other" (a hostile sender
must not be able to grow the label set without bound)."""


class IngestMetrics:
    """The ingest's counters and latency histogram, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter("explorer_ingest_messages", "Messages taken off the broker", ["kind"], registry=r)
        self.stored = Counter("explorer_ingest_stored", "Records inserted or updated", ["kind"], registry=r)
        self.resends = Counter("explorer_ingest_resends", "Records received again (already stored)", ["kind"],
                               registry=r)
        self.refused = Counter("explorer_ingest_refused", "Messages refused, by reason", ["reason"], registry=r)
        self.receipts = Counter("explorer_ingest_receipts", "Receipts published to devices", registry=r)
        self.store_errors = Counter("explorer_ingest_store_errors", "Batches the database failed (retried)",
                                    registry=r)
        self.batches = Counter("explorer_ingest_batches", "Batches committed", registry=r)
        self.latency = Histogram("explorer_ingest_latency_seconds", "Arrival to commit, per message",
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self._reasons: set[str] = set()

    def refusal(self, reason: str) -> None:
        kind = reason.split(":")[0][:60] or "unknown"
        if kind not in self._reasons and len(self._reasons) >= REFUSAL_KINDS:
            kind = "other"
        self._reasons.add(kind)
        self.refused.labels(kind).inc()

    def watch_database(self, store) -> None:
        """Report each device's lag and online state from `store` at every scrape."""
        self.registry.register(_DeviceCollector(store))


class _DeviceCollector:
    """Per-device gauges read from the database when Prometheus scrapes."""

    def __init__(self, store):
        self.store = store

    def describe(self):
        return []  # collected lazily: do not touch the database at registration

    def collect(self):
        lag = GaugeMetricFamily("explorer_device_lag_seconds",
                                "Now minus the start of the newest detection the server holds", labels=["device"])
        online = GaugeMetricFamily("explorer_device_online", "1 if the device's last status said online",
                                   labels=["device"])
        try:
            newest = self.store.newest_detection_by_device()
            statuses = self.store.statuses()
        except Exception as exc:  # a failing database shows as missing series, and in /health
            log.warning("metrics: could not read the devices: %s", exc)
            return
        now = utc_now()
        for device_id, started_on in sorted(newest.items()):
            lag.add_metric([device_id], max(0.0, (now - started_on).total_seconds()))
        for device_id, (status, _received) in sorted(statuses.items()):
            online.add_metric([device_id], 1.0 if status.online else 0.0)
        yield lag
        yield online


class MetricsServer:
    """`/metrics` (Prometheus text format) and `/health` (JSON; 503 when not healthy)."""

    def __init__(self, metrics: IngestMetrics, health, host: str = "127.0.0.1", port: int = 9108):
        """
        Args:
            health: a callable returning (healthy: bool, details: dict) for /health.
        """
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif self.path.split("?")[0] == "/health":
                    healthy, details = health()
                    body = json.dumps({"status": "ok" if healthy else "failing", **details}).encode()
                    self._send(200 if healthy else 503, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /health\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes every 15 s would flood the log
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="explorer-metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

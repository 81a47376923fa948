"""Reading serve's HTTP endpoints from a test: /healthz, /metrics (parsed with
prometheus_client's own parsers)."""
from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families


def get(port: int, path: str) -> tuple[int, str]:
    """(HTTP status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def families(port: int, openmetrics: bool = False) -> dict[str, Metric]:
    """The metric families of /metrics by name, as Prometheus asks for them: the
    classic text format, or OpenMetrics (which Prometheus 2 prefers)."""
    accept = "application/openmetrics-text; version=1.0.0" if openmetrics else "text/plain"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=5) as resp:
        text = resp.read().decode()
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    return {family.name: family for family in parse(text)}

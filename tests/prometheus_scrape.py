"""GET an exporter's /metrics and parse Prometheus' text format: the samples by series (name and
labels as written). For the metrics tests of every tier."""

from __future__ import annotations

import urllib.request


def scrape(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples

"""A hostile batch cannot grow the metrics without end: model names past a bound share
one series."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from barge.metrics import MAX_SERIES, OTHER_MODEL, Metrics


def test_model_labels_past_the_bound_share_one_series() -> None:
    m = Metrics()
    for i in range(MAX_SERIES + 500):
        m.finished("/v1/chat/completions", f"model-{i}", ok=True)
    families = {f.name: f for f in text_string_to_metric_families(
        generate_latest(m.registry).decode())}
    samples = [s for s in families["barge_requests"].samples if s.name.endswith("_total")]
    assert len(samples) <= MAX_SERIES + 1
    other = [s for s in samples if s.labels["model"] == OTHER_MODEL]
    assert len(other) == 1 and other[0].value == 500
    assert sum(s.value for s in samples) == MAX_SERIES + 500

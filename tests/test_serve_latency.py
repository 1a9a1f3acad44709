"""The server benchmark's bookkeeping: levels take turns, and every request is counted once."""
from __future__ import annotations

import pytest

from benchmarks import serve_latency


def test_levels_take_turns_and_keep_their_totals(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    def fake_timed(port: int, body: bytes, requests: int, concurrency: int):
        calls.append((concurrency, requests))
        # latencies that tell the levels apart; wall time = requests / (100 * concurrency)
        return [float(concurrency)] * requests, 0, requests / (100.0 * concurrency)

    monkeypatch.setattr(serve_latency, "timed", fake_timed)
    levels = serve_latency.measure(0, b"", requests=10, levels=[1, 8, 32], rounds=3)
    # 10 requests in 3 rounds: 4, 3, 3; the order turns each round
    assert calls == [(1, 4), (8, 4), (32, 4), (8, 3), (32, 3), (1, 3), (32, 3), (1, 3), (8, 3)]
    assert [r["requests"] for r in levels] == [10, 10, 10]
    assert [r["p50_ms"] for r in levels] == [1.0, 8.0, 32.0]
    assert [round(r["requests_per_s"]) for r in levels] == [100, 800, 3200]


def test_rounds_beyond_the_requests_are_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        serve_latency.parse_args(["--requests", "3", "--rounds", "5"])
    assert "--rounds at most --requests" in capsys.readouterr().err

"""loadtest statistics on crafted event timings, checked against a reference computation."""

from __future__ import annotations

import random
import statistics

import numpy as np
import pytest

from loadtest.client import Record
from loadtest.runner import poisson_gaps
from loadtest.stats import flatten, quantile, request_metrics, summarize, time_series
from loadtest.tokens import WordCounter


def crafted(start: float, ttft: float, gaps: list[float], chunks_extra: int = 2, tail: float = 0.01) -> Record:
    """A record whose text events arrive at start+ttft, then after each gap; one word per event."""
    times = [start + ttft]
    for g in gaps:
        times.append(times[-1] + g)
    rec = Record(
        url="u",
        start=start,
        input_tokens=7,
        token_times=times,
        chunks=len(times) + chunks_extra,
        text_parts=[" w"] * len(times),
        done=True,
    )
    rec.end = times[-1] + tail
    return rec


def llmperf_reference(rec: Record, tokens: int) -> dict[str, float]:
    """llmperf's client loop, replayed: time_to_next_token starts with TTFT, then every gap between text
    events; the sum is divided by the data events received; tokens/e2e is the request throughput."""
    time_to_next_token = []
    recent = rec.start
    for t in rec.token_times:
        time_to_next_token.append(t - recent)
        recent = t
    e2e = rec.end - rec.start
    return {
        "ttft_s": time_to_next_token[0],
        "inter_token_latency_s": sum(time_to_next_token) / rec.chunks,
        "end_to_end_latency_s": e2e,
        "request_output_throughput_token_per_s": tokens / e2e,
    }


def test_request_metrics_match_llmperf_definitions() -> None:
    rng = random.Random(3)
    for _ in range(50):
        rec = crafted(
            rng.uniform(0, 100),
            rng.uniform(0.01, 2),
            [rng.uniform(0.001, 0.1) for _ in range(30)],
            chunks_extra=rng.randrange(3),
        )
        got = request_metrics(rec, WordCounter(), t0=0.0)
        assert got["number_output_tokens"] == 31
        for key, want in llmperf_reference(rec, 31).items():
            assert got[key] == pytest.approx(want, rel=1e-12), key
        assert got["time_per_output_token_s"] == pytest.approx((rec.token_times[-1] - rec.token_times[0]) / 30)
        assert got["number_total_tokens"] == 38


def test_failed_request_has_zero_latencies_and_its_error() -> None:
    rec = Record(url="u", start=1.0, input_tokens=5, error_code=503, error_msg="overloaded", end=1.5)
    got = request_metrics(rec, WordCounter(), t0=0.0)
    assert (got["error_code"], got["error_msg"], got["ttft_s"], got["number_output_tokens"]) == (
        503,
        "overloaded",
        0.0,
        0,
    )


@pytest.mark.parametrize("q", [0.25, 0.5, 0.75, 0.9, 0.95, 0.99])
def test_quantiles_interpolate_as_numpy_and_pandas(q: float) -> None:
    rng = random.Random(q)
    values = [rng.expovariate(1.0) for _ in range(rng.randrange(1, 200))]
    assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)), rel=1e-12)
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.9) == pytest.approx(3.7)


def test_summary_excludes_errors_and_divides_safely() -> None:
    rows = [request_metrics(crafted(float(i), 0.1 * (i + 1), [0.01] * 9), WordCounter(), 0.0) for i in range(4)]
    rows.append(request_metrics(Record(url="u", start=0, input_tokens=1, error_code=500, end=1), WordCounter(), 0))
    s = summarize(rows, wall_s=10.0)
    assert s["ttft_s"]["mean"] == pytest.approx(0.25)
    assert s["ttft_s"]["quantiles"]["p50"] == pytest.approx(0.25)
    assert s["ttft_s"]["stddev"] == pytest.approx(statistics.stdev([0.1, 0.2, 0.3, 0.4]))
    assert (s["number_errors"], s["num_requests_started"], s["num_completed_requests"]) == (1, 5, 4)
    assert s["error_rate"] == pytest.approx(0.2)
    assert s["error_code_frequency"] == "{'500': 1}"
    assert s["mean_output_throughput_token_per_s"] == pytest.approx(40 / 10.0)
    assert s["mean_requests_in_flight"] == pytest.approx(sum(r["end_to_end_latency_s"] for r in rows[:4]) / 10.0)
    everything_failed = summarize(rows[-1:], wall_s=1.0)  # llmperf divides by zero here
    assert everything_failed["ttft_s"]["mean"] is None and everything_failed["num_completed_requests"] == 0


def test_flattened_names_are_llmperfs() -> None:
    rows = [request_metrics(crafted(0.0, 0.1, [0.01] * 4), WordCounter(), 0.0)]
    flat = flatten({"results": summarize(rows, 1.0)})
    for key in (
        "results_ttft_s_quantiles_p50",
        "results_inter_token_latency_s_mean",
        "results_end_to_end_latency_s_quantiles_p99",
        "results_number_output_tokens_stddev",
        "results_request_output_throughput_token_per_s_max",
        "results_mean_output_throughput_token_per_s",
        "results_num_completed_requests_per_min",
        "results_number_input_tokens_min",
    ):
        assert key in flat, key


def test_throughput_over_time_keeps_every_token() -> None:
    rows = [request_metrics(crafted(float(i) * 0.7, 0.2, [0.05] * 19), WordCounter(), 0.0) for i in range(6)]
    series = time_series(rows, bucket_s=0.5)
    assert sum(v * 0.5 for _, v in series) == pytest.approx(6 * 20)


def test_poisson_gaps_have_the_asked_rate() -> None:
    gaps = poisson_gaps(20.0, seed=1)
    sample = [next(gaps) for _ in range(20000)]
    assert statistics.fmean(sample) == pytest.approx(1 / 20, rel=0.03)
    assert statistics.stdev(sample) / statistics.fmean(sample) == pytest.approx(1.0, rel=0.05)  # exponential

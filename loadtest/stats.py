"""llmperf's per-request metrics and summary, computed from recorded event timings.

Definitions (ray-project/llmperf, token_benchmark_ray.py and its OpenAI client):
- ttft_s: request sent -> first event with non-empty text.
- inter_token_latency_s: (first gap = TTFT) + every gap between text events, summed, divided by the
  number of data events received ([DONE] excluded); i.e. (last text event - start) / events.
- end_to_end_latency_s: request sent -> stream fully read.
- number_output_tokens: len(tokenizer.encode(generated text)): re-tokenized, with the tokenizer's special
  tokens (llmperf's Llama tokenizer adds BOS, so +1 per request; `--no-special-tokens` leaves them out).
- request_output_throughput_token_per_s: output tokens / e2e.
- mean_output_throughput_token_per_s: all successful output tokens / wall time of the run.
Quantiles interpolate linearly (pandas' default), stddev is the sample standard deviation.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .client import Record
from .tokens import TokenCounter

TTFT = "ttft_s"
ITL = "inter_token_latency_s"
E2E = "end_to_end_latency_s"
TPOT = "time_per_output_token_s"  # ours: (last text - first text) / (tokens - 1), the decode pace
REQ_TPUT = "request_output_throughput_token_per_s"
IN_TOKENS = "number_input_tokens"
OUT_TOKENS = "number_output_tokens"
SUMMARY_KEYS = (ITL, TTFT, E2E, REQ_TPUT, IN_TOKENS, OUT_TOKENS, TPOT)
QUANTILES = (0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def request_metrics(rec: Record, counter: TokenCounter, t0: float) -> dict[str, Any]:
    """One llmperf individual response, plus ours: `start_s` (since the run's start), `url`, `events`
    (data events, llmperf's ITL divisor), `text_events` (those with text: a server that falls behind
    sends several tokens per event), `usage_completion_tokens` (the server's count, when it sends usage)."""
    out = counter.count_output(rec.text) if rec.ok else 0
    e2e = rec.end - rec.start if rec.ok else 0.0
    ttft = rec.token_times[0] - rec.start if rec.ok else 0.0
    itl = (rec.token_times[-1] - rec.start) / rec.chunks if rec.ok and out else 0.0
    tpot = (rec.token_times[-1] - rec.token_times[0]) / (out - 1) if rec.ok and out > 1 else None
    return {
        "error_code": rec.error_code,
        "error_msg": rec.error_msg,
        ITL: itl,
        TTFT: ttft,
        E2E: e2e,
        REQ_TPUT: out / e2e if e2e > 0 else 0.0,
        "number_total_tokens": rec.input_tokens + out,
        OUT_TOKENS: out,
        IN_TOKENS: rec.input_tokens,
        TPOT: tpot,
        "start_s": rec.start - t0,
        "url": rec.url,
        "events": rec.chunks,
        "text_events": len(rec.token_times),
        "usage_completion_tokens": rec.usage_output_tokens,
    }


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy/pandas 'linear')."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def describe(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {
            "quantiles": {f"p{int(q * 100)}": None for q in QUANTILES},
            "mean": None,
            "min": None,
            "max": None,
            "stddev": None,
        }
    return {
        "quantiles": {f"p{int(q * 100)}": quantile(values, q) for q in QUANTILES},
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "stddev": statistics.stdev(values) if len(values) > 1 else None,
    }


def summarize(rows: Sequence[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """llmperf's `results` block over individual responses (errors kept out of the distributions)."""
    ok = [r for r in rows if r["error_code"] is None]
    ret: dict[str, Any] = {key: describe([r[key] for r in ok if r[key] is not None]) for key in SUMMARY_KEYS}
    codes = Counter(str(r["error_code"]) for r in rows if r["error_code"] is not None)
    errors = sum(codes.values())
    out_tokens = sum(r[OUT_TOKENS] for r in ok)
    ret.update(
        {
            "num_requests_started": len(rows),
            "error_rate": errors / len(rows) if rows else 0,
            "number_errors": errors,
            "error_code_frequency": str(dict(codes)),
            "mean_output_throughput_token_per_s": out_tokens / wall_s if wall_s > 0 else 0.0,
            "num_completed_requests": len(ok),
            "num_completed_requests_per_min": len(ok) / wall_s * 60 if wall_s > 0 else 0.0,
            # ours: the load actually offered (llmperf's threads keep fewer than --num-concurrent-requests)
            "mean_requests_in_flight": sum(r[E2E] for r in ok) / wall_s if wall_s > 0 else 0.0,
        }
    )
    return ret


def flatten(d: dict[str, Any], parent: str = "") -> dict[str, Any]:
    """llmperf's flatten_dict: nested keys joined with '_'."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{parent}_{key}" if parent else key
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def time_series(rows: Sequence[dict[str, Any]], bucket_s: float = 1.0) -> list[tuple[float, float]]:
    """(bucket start, output tokens/s): each request's tokens spread evenly from its first token to its end."""
    ok = [r for r in rows if r["error_code"] is None and r[OUT_TOKENS]]
    if not ok:
        return []
    buckets: dict[int, float] = {}
    for r in ok:
        a, b = r["start_s"] + r[TTFT], r["start_s"] + r[E2E]
        rate = r[OUT_TOKENS] / max(b - a, 1e-9)
        for i in range(int(a // bucket_s), int(b // bucket_s) + 1):
            overlap = min(b, (i + 1) * bucket_s) - max(a, i * bucket_s)
            buckets[i] = buckets.get(i, 0.0) + max(overlap, 0.0) * rate
    return [(i * bucket_s, buckets.get(i, 0.0) / bucket_s) for i in range(max(buckets) + 1)]

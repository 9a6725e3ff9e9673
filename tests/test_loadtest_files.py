"""loadtest outputs: workloads, results files (llmperf's schema), plots, compare, non-terminal progress."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from loadtest.cli import main
from loadtest.client import Record
from loadtest.progress import PlainProgress, Snapshot, make_progress
from loadtest.results import load_run, run_name, summary_document, write_results
from loadtest.stats import request_metrics, summarize
from loadtest.tokens import HFTokenizer, WordCounter
from loadtest.workloads import Shape, bodies, make_workload

LLMPERF_ROW_KEYS = {
    "error_code",
    "error_msg",
    "inter_token_latency_s",
    "ttft_s",
    "end_to_end_latency_s",
    "request_output_throughput_token_per_s",
    "number_total_tokens",
    "number_output_tokens",
    "number_input_tokens",
}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    """A real `tokenizers` tokenizer.json (word level, BOS added), as a served model's directory has."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from loadtest.workloads import WORDS

    vocab = {"[UNK]": 0, "<s>": 1, **{w: i + 2 for i, w in enumerate(sorted(set(WORDS)))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def test_tokenizer_counts_without_special_tokens_and_truncates(tokenizer_dir: Path) -> None:
    tok = HFTokenizer(tokenizer_dir)
    assert tok.count("the river and the stone") == 5  # BOS not counted
    assert tok.truncate("the river and the stone", 3) == "the river and"


def test_output_tokens_are_counted_as_llmperf_counts_them(tokenizer_dir: Path) -> None:
    """llmperf's number_output_tokens is len(tokenizer.encode(text)): its Llama tokenizer adds BOS. A request
    whose text events carried "the river and" records 4 output tokens (3 without special tokens), and its
    request throughput and total tokens use that count; the ITL divisor stays the data events."""
    rec = Record(url="u", start=10.0, input_tokens=7, token_times=[10.5, 10.6, 10.7], chunks=5, done=True, end=11.0)
    rec.text_parts = ["the", " river", " and"]
    got = request_metrics(rec, HFTokenizer(tokenizer_dir), t0=0.0)
    assert (got["number_output_tokens"], got["number_total_tokens"]) == (4, 11)
    assert got["request_output_throughput_token_per_s"] == pytest.approx(4 / 1.0)
    assert got["inter_token_latency_s"] == pytest.approx(0.7 / 5)
    plain = request_metrics(rec, HFTokenizer(tokenizer_dir, special_tokens=False), t0=0.0)
    assert plain["number_output_tokens"] == 3


@pytest.mark.parametrize("workload", ["random", "multi-turn", "shared-prefix"])
def test_workloads_hit_the_drawn_token_counts(tokenizer_dir: Path, workload: str) -> None:
    tok = HFTokenizer(tokenizer_dir)
    reqs = make_workload(workload, Shape(60, 20, 30, 5), tok, seed=4)
    for _ in range(20):
        req = next(reqs)
        assert req.input_tokens == sum(tok.count(m["content"]) for m in req.messages)
        assert req.max_tokens > 0


def test_multi_turn_conversations_grow_and_shared_prefix_repeats(tokenizer_dir: Path) -> None:
    tok = HFTokenizer(tokenizer_dir)
    turns: dict[str, list[int]] = {}
    for req in (
        r
        for r, _ in zip(
            make_workload("multi-turn", Shape(20, 5, 10, 2), tok, turns=3, sessions=2), range(30), strict=False
        )
    ):
        turns.setdefault(req.session, []).append(len(req.messages))
    assert all(t == [1, 3, 5][: len(t)] for t in turns.values()), turns  # user, +assistant+user, ...
    assert any(len(t) == 3 for t in turns.values())
    systems = {
        r.messages[0]["content"]
        for r, _ in zip(make_workload("shared-prefix", Shape(), tok, system_tokens=200), range(5), strict=False)
    }
    assert len(systems) == 1 and tok.count(systems.pop()) == 200


def test_bodies_for_other_benchmarks() -> None:
    gen = bodies("m", "multi-turn", api="completions", shape=Shape(20, 5, 10, 2))
    body = next(gen)
    assert body["model"] == "m" and body["stream"] and body["prompt"] and body["user"].startswith("session-")


def _rows() -> list[dict]:
    recs = []
    for i in range(5):
        t = [i + 0.2 + 0.01 * k for k in range(10)]
        recs.append(
            Record(
                url="u",
                start=float(i),
                input_tokens=9,
                end=t[-1] + 0.01,
                token_times=t,
                chunks=11,
                text_parts=[" x"] * 10,
                done=True,
            )
        )
    recs.append(Record(url="u", start=0.0, input_tokens=9, end=0.1, error_code=404, error_msg="no such model"))
    return [request_metrics(r, WordCounter(), 0.0) for r in recs]


def test_results_files_have_llmperfs_layout_and_names(tmp_path: Path) -> None:
    rows = _rows()
    name = run_name("org/Model 7B", 550, 150)
    assert name == "org-Model-7B_550_150"
    doc = summary_document(name, {"model": "org/Model 7B", "num_concurrent_requests": 3}, summarize(rows, 6.0))
    s_path, r_path = write_results(tmp_path, name, doc, rows)
    assert s_path.name == "org-Model-7B_550_150_summary.json"
    assert r_path.name == "org-Model-7B_550_150_individual_responses.json"
    summary = json.loads(s_path.read_text())
    assert summary["version"] == "2023-08-31" and summary["name"] == f"{name}_summary"
    assert summary["results_ttft_s_quantiles_p50"] == pytest.approx(0.2)
    assert summary["results_inter_token_latency_s_mean"] == pytest.approx((0.2 + 0.09) / 11)
    assert summary["results_number_errors"] == 1 and summary["num_concurrent_requests"] == 3
    individual = json.loads(r_path.read_text())
    assert len(individual) == 6 and all(LLMPERF_ROW_KEYS <= set(r) for r in individual)
    assert load_run(tmp_path).summary == summary


def test_plots_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows()
    for label, scale in (("a", 1.0), ("b", 2.0)):
        doc = summary_document("m_1_1", {}, summarize(rows, 6.0 * scale))
        write_results(tmp_path / label, "m_1_1", doc, rows)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    line = next(li for li in out.splitlines() if "output throughput" in li)
    assert "0.5" in line.split("│")[-2]  # B/A: twice the wall time, half the throughput
    for png in ("compare_distributions.png", "compare_over_time.png"):
        data = (tmp_path / "cmp" / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000


def test_bad_tokenizer_directory_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--base-url", "http://127.0.0.1:1/v1", "--model", "m", "--tokenizer", str(tmp_path)]) == 2
    assert "pd-gateway loadtest:" in capsys.readouterr().err


def test_progress_prints_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = make_progress(total=10, stream=out, every_s=0.0)
    assert isinstance(progress, PlainProgress)
    progress.update(Snapshot(done=3, errors=1, total=10, tokens_per_s=123.4, ttft_p50_s=0.0456))
    progress.close(Snapshot(done=9, errors=1, total=10, tokens_per_s=100.0, ttft_p50_s=0.05))
    lines = out.getvalue().splitlines()
    assert lines == [
        "loadtest: done 3/10 errors 1 throughput 123.4 tok/s TTFT p50 46 ms",
        "loadtest: finished: done 9/10 errors 1 throughput 100.0 tok/s TTFT p50 50 ms",
    ]
    assert "\x1b" not in out.getvalue()  # no terminal escapes in logs

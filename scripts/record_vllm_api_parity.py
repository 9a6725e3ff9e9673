"""Record real vLLM's answers to tests/parity_api_cases.CASES into tests/fixtures/vllm_api_parity.json.

Two real vLLM CPU servers of the tiny model (docs/real-vllm.md), both served as `tiny` with
--max-model-len 512: a generating one with the LoRA adapter of scripts/make_tiny_lora.py
(`--enable-lora --max-lora-rank 8 --lora-modules tiny-lora=.models/tiny-lora`), and a pooling
one (`--runner pooling --convert embed`). Then:

    .venv/bin/python scripts/record_vllm_api_parity.py --url http://127.0.0.1:P1 --embed-url http://127.0.0.1:P2

Either URL may be left out to re-record only the other server's cases (the rest are kept).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.parity_api_cases import CASES, FIXTURE, ask  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a generating vLLM server with the tiny-lora adapter")
    parser.add_argument("--embed-url", help="a pooling (embed) vLLM server")
    args = parser.parse_args()
    urls = {"generate": args.url, "embed": args.embed_url}
    record = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {"answers": {}}
    with httpx.Client(timeout=120) as client:
        for case in CASES:
            url = urls.get(case.server)
            if url:
                record["answers"][case.name] = ask(client, url.rstrip("/"), case.case)
                record["vllm_version"] = client.get(url.rstrip("/") + "/version").json().get("version")
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(record, indent=1, ensure_ascii=True, sort_keys=True) + "\n")
    print(f"{len(record['answers'])} answers -> {FIXTURE}")


if __name__ == "__main__":
    main()

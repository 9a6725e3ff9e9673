"""Record real vLLM's answers to tests/parity_cases.CASES into tests/fixtures/vllm_parity.json.

Start one real vLLM CPU server with the tiny model first (docs/real-vllm.md), served as
`tiny` with --max-model-len 512, then:

    .venv/bin/python scripts/record_vllm_parity.py --url http://127.0.0.1:PORT

The fast test tier (tests/test_sim_parity.py) compares the simulator with this file;
tests/real/test_sim_parity_real.py checks that vLLM still answers what it holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.parity_cases import CASES, FIXTURE, MAX_MODEL_LEN, MODEL, ask  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL of a real vLLM server")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    url = args.url.rstrip("/")
    with httpx.Client(timeout=120) as client:
        version = client.get(url + "/version").json().get("version")
        answers = {case.name: ask(client, url, case) for case in CASES}
    record = {"vllm_version": version, "model": MODEL, "max_model_len": MAX_MODEL_LEN, "answers": answers}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, ensure_ascii=True) + "\n")
    print(f"{len(answers)} answers of vLLM {version} -> {args.out}")


if __name__ == "__main__":
    main()

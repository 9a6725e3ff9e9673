"""llmperf's results layout: `<name>_summary.json` (flattened, `results_*` keys) and
`<name>_individual_responses.json` (one object per request, llmperf's field names)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stats import flatten

RESULTS_VERSION = "2023-08-31"  # llmperf's LLMPerfResults version string


def run_name(model: str, mean_input_tokens: int, mean_output_tokens: int) -> str:
    """llmperf's file stem: model_in_out with every run of non-word characters as one '-'."""
    name = re.sub(r"[^\w\d-]+", "-", f"{model}_{mean_input_tokens}_{mean_output_tokens}")
    return re.sub(r"-{2,}", "-", name)


def summary_document(name: str, metadata: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    doc = {
        "version": RESULTS_VERSION,
        "name": f"{name}_summary",
        **metadata,
        "results": results,
        "timestamp": int(time.time()),
    }
    return flatten(doc)


def write_results(
    directory: str | Path, name: str, summary: dict[str, Any], rows: list[dict[str, Any]]
) -> tuple[Path, Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / f"{name}_summary.json"
    rows_path = out / f"{name}_individual_responses.json"
    summary_path.write_text(json.dumps(summary, indent=4, default=str))
    rows_path.write_text(json.dumps(rows, indent=4, default=str))
    return summary_path, rows_path


@dataclass
class Run:
    label: str
    summary: dict[str, Any]
    rows: list[dict[str, Any]]


def load_run(path: str | Path) -> Run:
    """A run from a results directory (its one *_summary.json) or a *_summary.json file."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*_summary.json"))
        if len(found) != 1:
            raise FileNotFoundError(f"{p}: expected one *_summary.json, found {len(found)}")
        p = found[0]
    rows_path = p.with_name(p.name.removesuffix("_summary.json") + "_individual_responses.json")
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []
    return Run(label=str(path), summary=json.loads(p.read_text()), rows=rows)

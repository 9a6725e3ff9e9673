"""docs/routes.md shows the route table the gateway runs with."""

from __future__ import annotations

from pathlib import Path

from gateway.routes import markdown


def test_docs_show_the_route_table() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "routes.md").read_text()
    assert markdown() in doc

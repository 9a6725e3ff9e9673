"""The user docs hold together: every relative Markdown link (and its #anchor) leads somewhere,
the README stays short, and the config examples a user would copy are valid config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gateway.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def _markdown_files() -> list[Path]:
    """The project's own .md files: no hidden folders (virtual environments, caches, models)."""
    skip = {"test-artifacts", "node_modules"}
    return sorted(
        p
        for p in ROOT.rglob("*.md")
        if not any(part.startswith(".") or part in skip for part in p.relative_to(ROOT).parts[:-1])
    )


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(h) for h in HEADING.findall(_prose(path.read_text()))}


def _relative_links(path: Path) -> list[str]:
    targets = LINK.findall(_prose(path.read_text()))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def _broken(path: Path) -> list[str]:
    broken = []
    for link in _relative_links(path):
        target, _, anchor = link.partition("#")
        dest = (path.parent / target).resolve() if target else path
        if not dest.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{link} (no heading #{anchor})")
    return broken


DOCS = _markdown_files()


def test_the_docs_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/configuration.md", "bench/README.md"} <= names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path: Path) -> None:
    assert _broken(path) == []


def test_a_missing_target_or_heading_is_reported(tmp_path: Path) -> None:
    (tmp_path / "guide.md").write_text("# A guide\n\n## How to run it\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](guide.md#how-to-run-it) [gone](missing.md) [bad](guide.md#nowhere) "
        "[web](https://example.com/x.md)\n```\n[in code](ignored.md)\n```\n"
    )
    assert _broken(page) == ["missing.md (no such file)", "guide.md#nowhere (no heading #nowhere)"]


def test_readme_stays_a_short_user_page() -> None:
    words = len((ROOT / "README.md").read_text().split())
    assert words <= 1500, f"README.md has {words} words; move detail to a guide under docs/"


@pytest.mark.parametrize("doc", ["README.md", "docs/configuration.md"])
def test_the_first_config_example_is_valid_config(doc: str) -> None:
    text = (ROOT / doc).read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(yaml.safe_load(example))
    assert [p.kind for p in config.pools] == ["replicas", "pd"]


def _config_fields(model: type, prefix: str = "") -> list[str]:
    """Every field of the gateway config, dotted, into nested sections (pools' and policies' too)."""
    from typing import get_args

    from pydantic import BaseModel

    out = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        out.append(prefix + name)
        kinds = [field.annotation, *get_args(field.annotation)]
        kinds += [a for k in kinds for a in get_args(k)]
        for kind in kinds:
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                out += _config_fields(kind, f"{prefix}{name}.")
    return out


def test_every_config_field_is_in_the_configuration_guide() -> None:
    from gateway.config import GatewayConfig

    guide = (ROOT / "docs" / "configuration.md").read_text()
    spans = " ".join(re.findall(r"`([^`]+)`", _prose(guide)) + FENCE.findall(guide))
    fields = dict.fromkeys(_config_fields(GatewayConfig))
    missing = [f for f in fields if not re.search(rf"\b{f.rsplit('.', 1)[-1]}\b", spans)]
    assert missing == []

"""`pd-gateway serve` re-executes itself with its heap on huge pages only where that works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.hugepages import huge_page_env, huge_page_env_here

MADVISE = "always [madvise] never\n"


def test_glibc_malloc_is_asked_for_huge_pages() -> None:
    env = huge_page_env({"PATH": "/bin"}, MADVISE, "glibc 2.36")
    assert env == {"PATH": "/bin", "PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_the_users_own_tunables_are_kept() -> None:
    env = huge_page_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "[always] madvise never", "glibc 2.39")
    assert env is not None
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize(
    ("env", "thp", "glibc"),
    [
        ({"PD_GATEWAY_HUGEPAGES": "0"}, MADVISE, "glibc 2.36"),  # turned off
        ({"PYTHONMALLOC": "pymalloc"}, MADVISE, "glibc 2.36"),  # the user chose an allocator
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, MADVISE, "glibc 2.36"),  # already re-executed
        ({}, "always madvise [never]", "glibc 2.36"),  # THP off in the kernel
        ({}, "", "glibc 2.36"),  # no THP at all
        ({}, MADVISE, "glibc 2.31"),  # glibc without the hugetlb tunable
        ({}, MADVISE, ""),  # musl and others
    ],
)
def test_nothing_changes_where_huge_pages_cannot_help(env: dict, thp: str, glibc: str) -> None:
    assert huge_page_env(env, thp, glibc) is None


def _serve_check(tmp_path: Path, config: str) -> list[str]:
    """Run `serve --check-config` as its own process; the lines it printed before the config
    are PYTHONMALLOC as each process (the first, and the re-executed one) saw it."""
    path = tmp_path / "gateway.yaml"
    path.write_text(config)
    probe = "import os, sys; from pdcli.main import main; print(os.environ.get('PYTHONMALLOC')); sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONMALLOC", "GLIBC_TUNABLES", "PD_GATEWAY_HUGEPAGES")}
    out = subprocess.run(
        [sys.executable, "-c", probe, "serve", "--config", str(path), "--check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split("{", 1)[0].split()


POOL = "pools: [{name: dp, workers: ['http://127.0.0.1:9']}]\n"


@pytest.mark.skipif(huge_page_env_here({}) is None, reason="no THP or no glibc >= 2.35 here")
def test_serve_runs_on_glibc_malloc_with_huge_pages_when_asked(tmp_path: Path) -> None:
    assert _serve_check(tmp_path, POOL + "tuning: {huge_pages: true}\n") == ["None", "malloc"]  # before, after


def test_serve_leaves_the_process_as_started_by_default(tmp_path: Path) -> None:
    assert _serve_check(tmp_path, POOL) == ["None"]

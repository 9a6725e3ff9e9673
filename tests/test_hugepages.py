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


@pytest.mark.skipif(huge_page_env_here({}) is None, reason="no THP or no glibc >= 2.35 here")
def test_serve_runs_on_glibc_malloc_with_huge_pages(tmp_path: Path) -> None:
    """The real command line: the process that parses the config has the new environment (an
    invalid config makes it stop right there, after the re-exec)."""
    bad = tmp_path / "gateway.yaml"
    bad.write_text("listen: {port: 99999}\n")
    probe = "import os, sys; from gateway.cli import main; print(os.environ.get('PYTHONMALLOC')); sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONMALLOC", "GLIBC_TUNABLES", "PD_GATEWAY_HUGEPAGES")}
    out = subprocess.run([sys.executable, "-c", probe, "serve", "--config", str(bad)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stdout.split() == ["None", "malloc"]  # before, and after the re-exec
    assert "listen.port" in out.stderr

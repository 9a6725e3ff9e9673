"""/dashboard in a real headless Chromium (Debian's package, driven by Playwright): it shows
every endpoint, and a killed worker turns unhealthy within seconds. Screenshots (laptop and
phone widths) go to test-artifacts/ (or $PD_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ADMIN = "admin-secret"
ARTIFACTS = Path(os.environ.get("PD_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def _chromium() -> str | None:
    return os.environ.get("PD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


async def _pools(sim, gateway):
    replicas = [await sim(model="sim-model") for _ in range(2)]
    p = await sim(model="sim-pd-model", role="prefill", kv_protocol="nixl")
    d = await sim(model="sim-pd-model", role="decode", kv_protocol="nixl")
    gw = await gateway(
        [
            {"name": "dp", "workers": [r.url for r in replicas]},
            {
                "name": "pd",
                "kind": "pd",
                "disaggregate_min_tokens": 0,
                "protocol": "nixl",
                "prefill": [p.url],
                "decode": [d.url],
            },
        ],
        auth={"admin_keys": [ADMIN]},
    )
    return replicas, p, d, gw


async def test_status_json_needs_the_admin_key_when_admin_keys_are_set(sim, gateway, client):
    _, _, _, gw = await _pools(sim, gateway)
    assert (await client.get(f"{gw.url}/dashboard/status")).status_code == 401
    ok = await client.get(f"{gw.url}/dashboard/status", headers={"authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200 and [p["name"] for p in ok.json()["pools"]] == ["dp", "pd"]
    page = await client.get(f"{gw.url}/dashboard")  # the page itself holds no data
    assert page.status_code == 200 and "<script>" in page.text and "http" not in page.text.split("<script>")[0]


async def test_dashboard_in_chromium_shows_endpoints_and_a_killed_worker(sim, gateway):
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("PD_REQUIRE_REAL"):  # set by scripts/test.sh, which installs chromium
            pytest.fail("no chromium: scripts/test.sh installs Debian's chromium package")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.async_api", reason="playwright is in the test extra")
    replicas, p, d, gw = await _pools(sim, gateway)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 720})
            await page.goto(f"{gw.url}/dashboard#key={ADMIN}")
            for ep in [*replicas, p, d]:
                await page.wait_for_selector(f'tr[data-endpoint="{ep.url}"][data-state="healthy"]', timeout=5000)
            roles = await page.eval_on_selector_all(
                'section[data-pool="pd"] tr[data-endpoint] td:nth-child(2)', "cells => cells.map(c => c.textContent)"
            )
            assert roles == ["prefill", "decode"]
            assert "key=" not in page.url  # the key left the address bar for the tab's storage
            killed = replicas[1].url
            await replicas[1].close()
            await page.wait_for_selector(f'tr[data-endpoint="{killed}"][data-state="unhealthy"]', timeout=5000)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-laptop.png"), full_page=True)
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
            overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0  # nothing wider than a phone's screen
            clipped = await page.eval_on_selector_all(
                "section", "ss => ss.filter(s => s.querySelector('table').scrollWidth > s.clientWidth).length"
            )
            assert clipped == 0  # every column of every table fits
        finally:
            await browser.close()
    assert (ARTIFACTS / "dashboard-laptop.png").stat().st_size > 0

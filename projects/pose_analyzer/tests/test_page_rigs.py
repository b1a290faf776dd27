"""The live page's rig card in a real headless Chromium, against a real server."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from multiview_helpers import VIEWS, make_rig_data_dir
from service_helpers import REPO, running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed"),
]

LIT = """(sel) => { const c = document.querySelector(sel);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] + d[i+1] + d[i+2] > 90) n++;
  return n; }"""
PIXELS = """(sel) => Array.from(document.querySelector(sel).getContext('2d')
  .getImageData(0, 0, 480, 420).data).join(',')"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    data = make_rig_data_dir(tmp_path_factory.mktemp("pose-page-rigs"), frames=360, reps=3)
    with running_server(data, f"sqlite:///{data.parent / 'page.db'}") as srv:
        yield srv


def test_rig_card_shows_four_views_and_a_3d_view_that_turns_when_dragged(server) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
            ],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/")
        page.wait_for_selector("#f-exercise option[value=squat]", state="attached", timeout=30_000)
        # Started from the page's own form, as a user would.
        page.fill("#r-sources", ", ".join(f"synth/{v}.jsonl" for v in VIEWS))
        page.fill("#r-calibration", "Calib.qca.txt")
        page.select_option("#f-exercise", "squat")
        page.click("#r-start")
        card = page.locator(".rig-card").first
        card.wait_for(timeout=30_000)
        assert card.locator("canvas.view").count() == 4
        sel3d = ".rig-card canvas.rig3d"
        page.wait_for_function(
            f"() => Number(document.querySelector('{sel3d}').dataset.instant || -1) > 30",
            timeout=30_000,
        )
        # Every view draws the fused skeleton reprojected into it; the 3D view draws it too.
        for v in VIEWS:
            page.wait_for_function(
                f"() => document.querySelector('.rig-card canvas[data-view={v}]')"
                ".dataset.status === 'used'",
                timeout=10_000,
            )
            assert page.evaluate(LIT, f".rig-card canvas[data-view={v}]") > 100, v
        assert page.evaluate(LIT, sel3d) > 300
        assert card.locator(".views-used").inner_text() == "4/4"
        assert card.locator(".angles tr").count() > 3
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "live-page-rig.png"), full_page=True)
        # The constructed athlete squats three times; the card counts them once for the rig.
        page.wait_for_function(
            "() => Number(document.querySelector('.rig-card .reps').textContent) >= 3",
            timeout=30_000,
        )
        # Once the rig has ended the picture holds still: only a drag can change it.
        page.wait_for_function(
            "() => document.querySelector('.rig-card').dataset.ended === 'true'", timeout=60_000
        )
        before = page.evaluate(PIXELS, sel3d)
        yaw = float(page.locator(sel3d).get_attribute("data-yaw") or 0)
        box = page.locator(sel3d).bounding_box()
        assert box is not None
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 120, y + 10, steps=6)
        page.mouse.up()
        after = page.evaluate(PIXELS, sel3d)
        assert float(page.locator(sel3d).get_attribute("data-yaw") or 0) > yaw + 0.5
        assert after != before
        assert page.evaluate(LIT, sel3d) > 300  # still a skeleton, seen from elsewhere
        page.screenshot(path=str(ARTIFACTS / "live-page-rig-turned.png"), full_page=True)
        assert not errors, errors
        browser.close()
    with httpx.Client(base_url=server.url) as http:
        rigs = http.get("/rigs").json()
        assert len(rigs) == 1 and rigs[0]["reps"] == 3

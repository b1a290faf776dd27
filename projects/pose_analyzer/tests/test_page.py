"""The live page in a real headless Chromium, against a real server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from service_helpers import REPO, make_data_dir, running_server
from synthetic import make_recording

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REAL = Path(__file__).parent / "data" / "real"
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    data = make_data_dir(tmp_path_factory.mktemp("pose-page"))
    make_recording("squat", 6, fps=30.0, tempo=(0.7, 0.1, 0.7, 0.3)).write(data / "squats.jsonl")
    shutil.copy(REAL / "sports2d_demo.jsonl", data / "demo.jsonl")
    with running_server(data, f"sqlite:///{data.parent / 'page.db'}") as srv:
        yield srv


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
            ],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors  # type: ignore[attr-defined]
        yield page
        browser.close()


def test_streams_appear_canvas_updates_and_reps_count(server, page) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector("#f-exercise option[value=squat]", state="attached", timeout=30_000)
    assert page.locator("#empty").is_visible()

    page.fill("#f-source", "squats.jsonl")
    page.select_option("#f-exercise", "squat")
    page.click("#f-start")
    card = page.locator(".card").first
    card.wait_for(timeout=30_000)
    assert "squat" in card.locator(".title").inner_text()

    canvas = card.locator("canvas")
    page.wait_for_function(
        "() => Number(document.querySelector('.card canvas').dataset.frame || -1) >= 0",
        timeout=30_000,
    )
    first = int(canvas.get_attribute("data-frame") or -1)
    page.wait_for_function(
        f"() => Number(document.querySelector('.card canvas').dataset.frame) > {first + 10}",
        timeout=30_000,
    )
    # The skeleton is drawn: some canvas pixels are not background black.
    lit = page.evaluate(
        """() => { const c = document.querySelector('.card canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0;
                   for (let i = 0; i < d.length; i += 4) if (d[i] + d[i+1] + d[i+2] > 60) n++;
                   return n; }"""
    )
    assert lit > 200
    page.wait_for_function(
        "() => Number(document.querySelector('.card .reps').textContent) >= 2", timeout=30_000
    )
    score = card.locator(".score").inner_text()
    assert score != "–" and 0 <= float(score) <= 100
    assert card.locator(".angles tr").count() > 3

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "live-page.png"), full_page=True)

    # Session history: the replayed session is listed with its reps and chart.
    page.wait_for_function(
        "() => Number(document.querySelector('.card .reps').textContent) >= 6", timeout=60_000
    )
    page.click("#tab-history")
    page.wait_for_selector("#sessions tbody tr", timeout=30_000)
    page.locator("#sessions tbody tr").first.click()
    page.wait_for_selector("#session-detail tbody tr", timeout=30_000)
    assert page.locator("#session-detail tbody tr").count() == 6
    page.screenshot(path=str(ARTIFACTS / "session-history.png"), full_page=True)
    assert not page.errors, page.errors


def test_a_bad_source_shows_the_service_message(server, page) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector("#f-exercise option[value=squat]", state="attached", timeout=30_000)
    page.fill("#f-source", "../secret.mp4")
    page.click("#f-start")
    page.wait_for_function(
        "() => document.querySelector('#form-error').textContent.length > 0", timeout=30_000
    )
    assert "outside the data directory" in page.inner_text("#form-error")


def test_four_streams_in_a_2x2_grid_and_ended_cards_keep_their_summary(server, page) -> None:
    """The Sports2D clip (labels_reps.toml: the athlete does 2 jumping jacks, a passer-by
    walks through) on four streams, replayed as fast as they go: the four cards form a
    2x2 grid, each counts its athlete's reps only, and once the streams end their cards
    stay with the session summary until dismissed."""
    import httpx

    with httpx.Client(base_url=server.url, timeout=30) as http:
        # The server is shared by this module: streams of earlier tests (kept a minute after
        # they end) would be cards too. Remove them so the page shows exactly these four.
        for stream in http.get("/streams").json():
            http.delete(f"/streams/{stream['id']}")
        assert http.get("/streams").json() == []
    page.goto(server.url + "/")
    page.wait_for_selector("#f-exercise option[value=squat]", state="attached", timeout=30_000)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(4):
            r = http.post(
                "/streams",
                json={"source": "demo.jsonl", "exercise": "jumping_jack", "realtime": False},
            )
            assert r.status_code == 201, r.text
    page.wait_for_function("() => document.querySelectorAll('.card').length === 4", timeout=60_000)
    # All four boxes in one layout pass: the cards grow while the streams run, so boxes
    # read one call apart can come from different layouts.
    boxes = page.evaluate(
        "() => [...document.querySelectorAll('.card')].map(c => { const r ="
        " c.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; })"
    )
    assert len(boxes) == 4
    xs = sorted({round(b["x"]) for b in boxes if b})
    ys = sorted({round(b["y"]) for b in boxes if b})
    assert len(xs) == 2 and len(ys) == 2, boxes  # two columns, two rows
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card')].every(c => c.classList.contains('ended')"
        " && c.querySelector('.summary').textContent.includes('reps'))",
        timeout=60_000,
    )
    for i in range(4):
        card = page.locator(".card").nth(i)
        assert card.locator(".reps").inner_text() == "2"
        assert "athlete #" in card.locator(".athletes").inner_text()
        assert "2 reps" in card.locator(".summary").inner_text()
        assert card.locator(".stop").inner_text() == "Dismiss"
    page.screenshot(path=str(ARTIFACTS / "live-page-ended.png"), full_page=True)
    page.locator(".card .stop").first.click()
    page.wait_for_function("() => document.querySelectorAll('.card').length === 3", timeout=10_000)
    assert not page.errors, page.errors

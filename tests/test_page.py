"""Browser tests of the Scout page: Debian's headless Chromium against a real Scout server.

Playwright's sync API cannot run inside the test's event loop, which also serves Scout,
so these tests use the async API.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, Route, async_playwright, expect

from tests.conftest import make_settings, run_scout
from tests.helpers import approve, submit, wait_for_status

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "test-artifacts"
QUESTION = "How does Scout recover a job after a restart?"
TIMEOUT_MS = 15_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"needs Debian's Chromium at {CHROMIUM}: apt-get install -y chromium",
    ),
]


@dataclass
class BrowserPage:
    """A page plus what it reported: uncaught script errors and the page's own warnings."""

    page: Page
    script_errors: list[str] = field(default_factory=list)
    scout_warnings: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def open_page() -> AsyncIterator[BrowserPage]:
    """Launch Chromium with a wide viewport, yield one page, then close the browser."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            page = await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            watched = BrowserPage(page)
            page.on("pageerror", lambda error: watched.script_errors.append(str(error)))
            page.on(
                "console",
                lambda message: (
                    watched.scout_warnings.append(message.text)
                    if message.text.startswith("Scout:")
                    else None
                ),
            )
            yield watched
        finally:
            await browser.close()


def plain_text(markdown: str) -> str:
    """Drop the inline Markdown markers of a block and collapse whitespace, as the page shows it."""
    text = markdown.replace("`", "").replace("**", "")
    text = re.sub(r"(?<!\w)_|_(?!\w)", "", text)
    return " ".join(text.split())


def report_headings(markdown: str) -> list[str]:
    return [plain_text(line.lstrip("#")) for line in markdown.splitlines() if line.startswith("#")]


def report_paragraphs(markdown: str) -> list[str]:
    blocks = (block.strip() for block in markdown.split("\n\n"))
    return [plain_text(block) for block in blocks if block and not block.startswith("#")]


async def page_report(page: Page) -> tuple[list[str], list[str]]:
    """Return the report's headings and paragraphs as the page renders them."""
    body = page.locator("#report-body")
    headings = await body.locator("h4, h5, h6").all_inner_texts()
    paragraphs = await body.locator(":scope > p").all_inner_texts()
    return [" ".join(h.split()) for h in headings], [" ".join(p.split()) for p in paragraphs]


async def assert_report_matches(page: Page, report: str) -> None:
    """Check the rendered report against the server's text: nothing lost, nothing repeated."""
    headings, paragraphs = await page_report(page)
    assert headings == report_headings(report)
    assert paragraphs == report_paragraphs(report)
    question_heading = page.locator("#report-body").get_by_role(
        "heading", name=QUESTION, exact=True
    )
    await expect(question_heading).to_have_count(1)


async def assert_citations_link_sources(page: Page) -> int:
    """Check that each citation links to the url of the source it names; return the count."""
    citations = page.locator("#report-body a.citation")
    count = await citations.count()
    assert count >= 1
    for index in range(count):
        citation = citations.nth(index)
        source_id = await citation.get_attribute("data-source-id")
        href = await citation.get_attribute("href")
        assert href, f"citation {index} has no href"
        listed = page.locator(f"#source-{source_id} a")
        await expect(listed).to_have_attribute("href", href)
    return count


def timeline(page: Page):  # type: ignore[no-untyped-def]
    return page.locator("#timeline")


async def submit_question(page: Page, base_url: str) -> str:
    """Open the page, submit QUESTION and return the job id from the URL hash."""
    await page.goto(base_url + "/")
    await page.get_by_label("Research question").fill(QUESTION)
    await page.get_by_role("button", name="Start research").click()
    await page.wait_for_url(re.compile(r"#job=[0-9a-f-]+$"))
    return page.url.rsplit("#job=", 1)[1]


async def test_page_reviews_plan_and_streams_report(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", SCOUT_OFFLINE_TOKEN_DELAY_MS="2")
    async with run_scout(settings) as scout, scout.client() as client, open_page() as browser:
        page = browser.page
        job_id = await submit_question(page, scout.base_url)

        # Plan review: the form shows the drafted plan once the job awaits approval.
        steps = page.locator("#plan-form fieldset.step")
        await expect(page.locator("#job-status")).to_have_attribute(
            "data-status", "awaiting_approval"
        )
        draft = (await client.get(f"/status/{job_id}")).json()["plan"]["steps"]
        assert len(draft) >= 2
        await expect(steps).to_have_count(len(draft))
        first = steps.nth(0)
        await expect(first.get_by_label("Goal", exact=True)).to_have_value(draft[0]["goal"])

        # An invalid plan gets the server's problem response next to the form, and the job waits.
        await first.get_by_label("Goal", exact=True).fill("")
        await page.get_by_role("button", name="Approve plan").click()
        problem = page.locator("#plan-problem")
        await expect(problem).to_be_visible()
        await expect(problem).to_contain_text("Invalid request")
        await expect(problem).to_contain_text("Step 1, goal")
        await expect(steps.nth(0).get_by_label("Goal", exact=True)).to_have_attribute(
            "aria-invalid", "true"
        )
        await expect(page.locator("#job-status")).to_have_attribute(
            "data-status", "awaiting_approval"
        )

        # Edit step 1, add a step, remove the drafted step 2.
        edited_goal = "Find out how Scout resumes jobs after a restart"
        edited_queries = ["scout resume job restart", "scout checkpoint lease"]
        added_goal = "Find out what the event stream sends to a client that reconnects"
        added_queries = ["event stream reconnect last event id"]
        await steps.nth(0).get_by_label("Goal", exact=True).fill(edited_goal)
        await steps.nth(0).get_by_label("Search queries").fill("\n".join(edited_queries) + "\n\n")
        await page.get_by_role("button", name="Add step").click()
        await expect(steps).to_have_count(len(draft) + 1)
        added = steps.nth(len(draft))
        await expect(added.get_by_label("Goal", exact=True)).to_be_focused()
        await added.get_by_label("Goal", exact=True).fill(added_goal)
        await added.get_by_label("Search queries").fill(added_queries[0])
        await page.get_by_role("button", name="Remove step 2").click()
        await expect(steps).to_have_count(len(draft))

        async with page.expect_request(re.compile(r"/approve$")) as approval:
            await page.get_by_role("button", name="Approve plan").click()
        expected_steps = [
            {"goal": edited_goal, "queries": edited_queries},
            *draft[2:],
            {"goal": added_goal, "queries": added_queries},
        ]
        body: dict[str, Any] = (await approval.value).post_data_json
        assert body == {"approved": True, "edited_plan": {"steps": expected_steps}}

        # The report streams in and the job finishes.
        await expect(page.locator("#job-status")).to_have_attribute("data-status", "done")
        await expect(page.locator("#job-status")).to_have_text("Done")
        await expect(page.locator("#plan-form")).to_have_count(0)
        await expect(page.locator("#plan")).to_contain_text("You edited this plan")
        await expect(page.locator("#plan")).not_to_contain_text("null")
        await expect(page.locator("#report-body")).to_have_attribute("aria-busy", "false")
        for entry in (
            "Plan drafted",
            "Plan edited",
            "Source 1 gathered",
            "Writing the report",
            "Done",
        ):
            await expect(timeline(page)).to_contain_text(entry)

        view = (await client.get(f"/status/{job_id}")).json()
        assert view["status"] == "done"
        assert view["plan_edited"] is True
        await assert_report_matches(page, view["report"])
        for goal in (edited_goal, added_goal):
            await expect(
                page.locator("#report-body").get_by_role("heading", name=goal)
            ).to_have_count(1)
        citation_count = await assert_citations_link_sources(page)
        await expect(page.locator("#sources > li")).to_have_count(len(view["sources"]))

        ARTIFACTS_DIR.mkdir(exist_ok=True)
        await page.evaluate("window.scrollTo(0, 0)")  # the sticky sidebar follows the scroll
        await page.screenshot(path=str(ARTIFACTS_DIR / "page-done.png"), full_page=True)

        # Reopen the finished job from the recent-jobs list on a fresh page.
        await page.goto(scout.base_url + "/")
        await expect(page.locator("#job")).to_be_hidden()
        recent = page.locator("#recent-jobs a", has_text=QUESTION)
        await expect(recent).to_have_count(1)
        await expect(recent).to_contain_text("Done")
        await recent.click()
        await page.wait_for_url(re.compile(f"#job={job_id}$"))
        await expect(page.locator("#job-status")).to_have_attribute("data-status", "done")
        await expect(page.locator("#report-body a.citation")).to_have_count(citation_count)
        await assert_report_matches(page, view["report"])
        await expect(recent).to_have_attribute("aria-current", "true")

        # A reload reopens the job named in the URL hash.
        await page.reload()
        await expect(page.locator("#job-status")).to_have_attribute("data-status", "done")
        await expect(page.locator("#report-body a.citation")).to_have_count(citation_count)
        await assert_report_matches(page, view["report"])

        assert browser.script_errors == []
        assert browser.scout_warnings == []


@pytest.mark.parametrize("stream_failure", ["no EventSource", "events route fails"])
async def test_page_polls_when_stream_unavailable(tmp_path: Path, stream_failure: str) -> None:
    settings = make_settings(tmp_path / "data")
    async with run_scout(settings) as scout, scout.client() as client, open_page() as browser:
        page = browser.page
        if stream_failure == "no EventSource":
            await page.add_init_script("delete window.EventSource")
        else:
            await page.route(
                re.compile(r"/research/[^/]+/events"),
                lambda route: route.fulfill(
                    status=503, content_type="application/problem+json", body="{}"
                ),
            )
        job_id = await submit_question(page, scout.base_url)

        await expect(timeline(page)).to_contain_text("checking the status every second")
        approve_button = page.get_by_role("button", name="Approve plan")
        await expect(approve_button).to_be_visible()
        async with page.expect_request(re.compile(r"/approve$")) as approval:
            await approve_button.click()
        assert (await approval.value).post_data_json == {"approved": True}

        await expect(page.locator("#job-status")).to_have_attribute("data-status", "done")
        view = (await client.get(f"/status/{job_id}")).json()
        assert view["plan_edited"] is False
        await assert_report_matches(page, view["report"])
        await assert_citations_link_sources(page)
        await expect(page.locator("#sources > li")).to_have_count(len(view["sources"]))
        await expect(timeline(page)).to_contain_text("Source 1 gathered")

        assert browser.script_errors == []
        assert browser.scout_warnings == []


@dataclass(frozen=True)
class Frame:
    """One Server-Sent Events frame as sent, with its id and event name when it has them."""

    raw: str
    id: int | None
    event: str | None


def parse_frames(body: str) -> list[Frame]:
    frames = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        event_id = int(fields["id"]) if "id" in fields else None
        frames.append(Frame(block + "\n\n", event_id, fields.get("event")))
    return frames


async def test_page_resumes_after_reconnect_event(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    async with run_scout(settings) as scout, scout.client() as client, open_page() as browser:
        page = browser.page
        job_id = await submit(client, QUESTION)
        await wait_for_status(client, job_id, {"awaiting_approval"})
        assert (await approve(client, job_id)).status_code == 200
        view = await wait_for_status(client, job_id, {"done", "failed"})
        assert view["status"] == "done"

        # The first stream stops halfway through the report with a `reconnect` event. The
        # second one starts five events before the page's last id, so the page must drop
        # the repeats by id. Both leave out the `report` event, so the page's text is built
        # from tokens alone.
        requested_urls: list[str] = []
        cut_id = 0

        async def serve_events(route: Route) -> None:
            nonlocal cut_id
            requested_urls.append(route.request.url)
            if len(requested_urls) == 1:
                frames = parse_frames(await (await route.fetch()).text())
                tokens = [frame for frame in frames if frame.event == "token"]
                assert len(tokens) > 20
                cut_id = tokens[len(tokens) // 2].id or 0
                served = [
                    frame.raw for frame in frames if frame.id is not None and frame.id <= cut_id
                ]
                reconnect = (
                    f'event: reconnect\ndata: {{"last_event_id": {cut_id}, "reason": "test"}}\n\n'
                )
                body = "retry: 2000\n\n" + "".join(served) + reconnect
            else:
                earlier = re.sub(
                    r"last_event_id=\d+", f"last_event_id={cut_id - 5}", route.request.url
                )
                frames = parse_frames(await (await route.fetch(url=earlier)).text())
                body = "".join(frame.raw for frame in frames if frame.event != "report")
            await route.fulfill(
                status=200,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                body=body,
            )

        await page.route(re.compile(r"/research/[^/]+/events"), serve_events)
        await page.goto(f"{scout.base_url}/#job={job_id}")

        await expect(page.locator("#job-status")).to_have_attribute("data-status", "done")
        await expect(timeline(page)).to_contain_text(f"resuming after event {cut_id}")
        assert len(requested_urls) == 2
        assert requested_urls[1].endswith(f"/events?last_event_id={cut_id}")
        await assert_report_matches(page, view["report"])
        await assert_citations_link_sources(page)

        assert browser.script_errors == []
        assert browser.scout_warnings == []

"""The operator console in a real headless Chromium (Debian's, driven by Playwright): sign in,
watch a task complete live, cancel one, preview an image result, with no console error and no
request leaving the API's origin."""

from __future__ import annotations

import struct
import zlib

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from support import api_process
from taskfleet.client import ConsumerClient, ProducerClient

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
TOKENS = {"TASKFLEET_PRODUCER_TOKENS": "ptok", "TASKFLEET_CONSUMER_TOKENS": "ctok", "TASKFLEET_ADMIN_TOKENS": "admin-secret"}

pytestmark = pytest.mark.timeout(120)


def png(width: int, height: int) -> bytes:
    """A small solid-colour PNG, made here so the test needs no image library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x2d\x6c\xdf" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture
def api(tmp_path):
    with api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path, TASKFLEET_LEASE_S="30", **TOKENS) as server:
        yield server


@pytest.fixture
async def browser_page(api, tmp_path):
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context()
        page = await context.new_page()
        page.set_default_timeout(15_000)
        page.errors, page.requests = [], []
        page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on("request", lambda request: page.requests.append(request.url))
        try:
            yield page
        finally:
            await page.screenshot(path=str(tmp_path / "console.png"), full_page=True)  # outside the repo
            await browser.close()


async def test_console_signs_in_follows_cancels_and_previews(api, browser_page):
    page = browser_page
    async with ProducerClient(api.url, "ptok") as producer, \
            ConsumerClient(api.url, "ctok", consumer_id="browser-consumer", host="gpu-7") as consumer:  # fmt: skip
        await consumer.report({"workflows": ["echo"], "concurrency": 2, "in_flight": 0, "model_servers": [
            {"url": "http://gpu-7:8101", "workflow": "flux", "status": "healthy", "in_flight": 0, "capacity": 1}]})

        # Sign in with the admin token through the form.
        await page.goto(f"{api.url}/ui")
        await expect(page.locator("#login-form")).to_be_visible()
        await page.fill("#token", "admin-secret")
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("h2", has_text="Queues")).to_be_visible()
        await expect(page.locator("main table")).to_contain_text("echo")
        await expect(page.locator("main")).to_contain_text("1 consumer(s) reporting")

        cookies = {c["name"]: c for c in await page.context.cookies()}
        session = cookies["taskfleet_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        assert "admin-secret" not in session["value"]

        # A task followed live: claimed, progress, completed with an image result from /files.
        upload = httpx.post(f"{api.url}/api/files", headers={"Authorization": "Bearer ptok"},
                            files={"file": ("result.png", png(24, 16), "image/png")})  # fmt: skip
        image_url = upload.json()["url"]
        assert image_url.startswith(f"{api.url}/files/")
        watched = await producer.submit("echo", {"data": "live"})
        await page.fill("#search-id", watched["task_id"])
        await page.click("#search button")
        await expect(page.locator("#task-id")).to_have_text(watched["task_id"])
        await expect(page.locator(".status").first).to_have_text("PENDING")

        (task,) = await consumer.fetch(["echo"], wait_s=5)
        lease = task["lease"]["id"]
        await expect(page.locator(".status").first).to_have_text("PROCESSING")
        await consumer.heartbeat(task["task_id"], lease, {"percent": 60, "message": "rendering"})
        await expect(page.locator("#progress")).to_have_attribute("value", "60")
        await expect(page.locator("main")).to_contain_text("rendering")
        await consumer.complete(task["task_id"], lease, {"data": {"image": image_url}})
        await expect(page.locator(".status").first).to_have_text("COMPLETED")
        preview = page.locator(".preview img")
        await expect(preview).to_have_attribute("src", image_url)
        # Loaded and decoded: the image really came from the API's /files.
        await page.wait_for_function("() => document.querySelector('.preview img').naturalWidth === 24")
        await expect(page.locator("main table").last).to_contain_text("browser-consumer")  # history

        # Cancel from the task list: the page shows it end, and the API agrees.
        doomed = await producer.submit("echo", {"data": "doomed"})
        await page.click("nav a[href='#/tasks']")
        await page.select_option("#filter-status", "PENDING")
        await page.click(".filters button")
        await page.click(f"a[href='#/task/{doomed['task_id']}']")
        await page.click("#cancel")
        await expect(page.locator(".status").first).to_have_text("CANCELLED")
        assert (await producer.get(doomed["task_id"]))["status"] == "CANCELLED"
        # Retry puts it back in the queue, and the page follows it again.
        await page.click("#retry")
        await expect(page.locator(".status").first).to_have_text("PENDING")
        assert (await producer.get(doomed["task_id"]))["status"] == "PENDING"

        # A pipeline shows its stages, each linking to its tasks.
        pipeline = await producer.submit("echo_fanout", {"words": ["x", "y"]})
        await page.fill("#search-id", pipeline["task_id"])
        await page.click("#search button")
        stages = page.locator("section", has=page.locator("h3", has_text="Stages"))
        await expect(stages).to_contain_text("first")
        await expect(stages).to_contain_text("each")
        await expect(stages.locator("a[href^='#/task/tsk_']")).to_have_count(1)

        # Consumers and their model servers.
        await page.click("nav a[href='#/consumers']")
        await expect(page.locator("main")).to_contain_text("browser-consumer")
        await expect(page.locator("main")).to_contain_text("http://gpu-7:8101")

        # The session cookie alone cannot act: a write needs the CSRF token the page sends.
        jar = {"taskfleet_session": session["value"]}
        other = await producer.submit("echo", {"data": "kept"})
        forged = httpx.post(f"{api.url}/api/tasks/{other['task_id']}/cancel", cookies=jar)
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "csrf_failed"
        assert httpx.get(f"{api.url}/api/stats", cookies=jar).status_code == 200

    assert page.errors == []
    assert page.requests and all(url.startswith(api.url + "/") for url in page.requests), page.requests
    assert not any("admin-secret" in url for url in page.requests)


async def test_console_runs_without_sign_in_when_the_api_is_open(tmp_path, browser_page_open):
    page, api = browser_page_open
    await page.goto(f"{api.url}/ui")
    await expect(page.locator("h2", has_text="Queues")).to_be_visible()
    await expect(page.locator("#login")).to_be_hidden()
    assert page.errors == []


@pytest.fixture
async def browser_page_open(tmp_path):
    with api_process(f"sqlite:///{tmp_path / 'open.db'}", tmp_path) as api:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page()
            page.errors = []
            page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: page.errors.append(str(exc)))
            try:
                yield page, api
            finally:
                await browser.close()

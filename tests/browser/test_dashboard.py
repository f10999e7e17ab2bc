"""A user's afternoon in the dashboard, in headless Chromium (both databases): sign in with the
keyboard, see the GPU agent (and agents syncing, unhealthy, behind a tunnel), import a workflow
(and fix what the form flags), fill and submit the run form with the keyboard, with an uploaded
image, watch the progress bar move, see the output in the gallery (and video, audio and other
files of another task), restore an old version, create and revoke a key, invite a member who
joins from their own dashboard, change their role, ping a webhook and read its delivery log,
redeliver, rotate its secret, approve ``runyard login`` from the pairing page. Every page shown
passes the accessibility smoke check; the SQLite run saves the screenshots of docs/dashboard.md
under docs/screenshots/."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from playwright.async_api import FileChooser, expect

from runyard.domain.webhooks import standard_signature
from runyard.protocol import v1
from runyard.store.agents import AgentRepos
from runyard.store.tables import Task
from tests.browser.conftest import (
    ACCESSIBILITY_CHECK,
    EMAIL,
    Screenshot,
    Stack,
    WebhookReceiver,
    assert_accessible,
)
from tests.fakes.comfyui import make_png
from tests.fixtures.graphs import add_media_outputs, text_to_image, text_to_image_workflow
from tests.integration.conftest import PASSWORD
from tests.integration.live import RawAgent, wait_for_status
from tests.integration.uploads import image_workflow


async def until(page: Any, script: str, timeout: float = 30) -> Any:
    """Poll a JavaScript expression until it is truthy. (Playwright's wait-for-function
    evaluates its string inside the page, which the dashboard's Content-Security-Policy
    forbids.)"""
    async with asyncio.timeout(timeout):
        while True:
            value = await page.evaluate(f"() => ({script})")
            if value:
                return value
            await asyncio.sleep(0.05)


async def sign_in(page: Any, stack: Stack, screenshot: Screenshot) -> None:
    await page.goto(stack.url + "/agents")
    await expect(page).to_have_url(re.compile(r"/login\?next=%2Fagents$"))
    await expect(page.get_by_role("heading", name="Sign in to Runyard")).to_be_visible()
    # Keyboard only: the email field, Tab to the password, Enter to submit.
    await page.get_by_label("Email").focus()
    await page.keyboard.type(EMAIL)
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await assert_accessible(page)
    await screenshot(page, "login")
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(stack.url + "/agents")


async def other_agents(stack: Stack) -> list[RawAgent]:
    """Three more agents of the team, as the gateway sees them: one syncing its models (42 %),
    one whose ComfyUI stopped answering, one behind a tunnel. (No protocol frame reports
    ``tunnel`` yet, so that one is set in its row, the way the page reads it.)"""
    agents = [
        await RawAgent.connect(stack.server, stack.agent_key, name)
        for name in ("sync-box", "sick-box", "tunnel-box")
    ]
    await agents[0].send(
        v1.StatusUpdate(agent_status="syncing", sync_phase="models", sync_percent=42.4)
    )
    await agents[1].send(v1.StatusUpdate(agent_status="unhealthy"))
    async with stack.server.ctx.db.write() as session:
        await AgentRepos(session).set_status(
            stack.team_id, "tunnel-box", "tunnel", None, None, None
        )
    async with asyncio.timeout(10):
        while True:
            listed = await stack.api.get("/agents", headers=stack.owner_headers)
            seen = {a["agent_id"]: a["agent_status"] for a in listed.json()["agent_list"]}
            if seen.get("sync-box") == "syncing" and seen.get("sick-box") == "unhealthy":
                return agents
            await asyncio.sleep(0.05)


EXPECTED_AGENTS = {
    "gpu-box-1": "idle",
    "sync-box": "syncing 42%",
    "sick-box": "unhealthy",
    "tunnel-box": "tunnel",
}


async def test_run_a_workflow_from_the_dashboard_and_watch_it(
    page: Any, stack: Stack, tmp_path: Path, screenshot: Screenshot
) -> None:
    extra_agents = await other_agents(stack)
    try:
        await run_a_workflow(page, stack, tmp_path, screenshot)
    finally:
        for agent in extra_agents:
            await agent.close()


async def run_a_workflow(page: Any, stack: Stack, tmp_path: Path, screenshot: Screenshot) -> None:
    await sign_in(page, stack, screenshot)

    # Agents, as the server draws them, then as the page script redraws them from the API
    # (every status with its own look: syncing with its percent, unhealthy in red).
    drawn = await (await page.request.get(stack.url + "/agents")).text()
    for agent_id, status in EXPECTED_AGENTS.items():
        assert re.search(rf"{agent_id}<div.*?status-{status.split()[0]}\">{status}<", drawn, re.S)
    await until(page, "document.querySelector('table[data-live-agents]').dataset.updated")
    rows = page.locator("table[data-live-agents] tbody tr")
    for agent_id, status in EXPECTED_AGENTS.items():
        badge = rows.filter(has_text=agent_id).locator(".status")
        await expect(badge).to_have_text(status)
        await expect(badge).to_have_class(f"status status-{status.split()[0]}")
    row = rows.filter(has_text="gpu-box-1")
    await expect(row).to_contain_text("RTX 4090")
    await expect(row).to_contain_text("free of")
    await expect(row.locator(".label", has_text="comfyui")).to_be_visible()
    await assert_accessible(page)
    await screenshot(page, "agents")
    # The check is not vacuous: a field without a label, an image without alt text and a
    # skipped heading level, added to this page, are each reported.
    probe = "<input name='q'><img src='data:,'><h4>Deep</h4><button></button>"
    await page.evaluate(
        f"() => document.querySelector('main').insertAdjacentHTML('beforeend', `{probe}`)"
    )
    found = " | ".join(await page.evaluate(ACCESSIBILITY_CHECK))
    for problem in ("field without a label", "image without alt", "heading level skipped"):
        assert problem in found, found
    assert "button without a name" in found, found
    await page.reload()

    # Import: first with mistakes, each shown next to its field.
    flow = image_workflow("img2img")
    await page.get_by_role("link", name="Workflows").click()
    await assert_accessible(page)
    await page.get_by_role("link", name="Import a workflow").click()
    await page.get_by_label("Slug").fill("x")  # passes the pattern, too short
    await page.get_by_label("Name", exact=True).fill("Image to image")
    await page.get_by_label("Graph (API-format JSON)").fill('{"nodes": [], "links": []}')
    await page.get_by_label("Parameters (JSON list, optional)").fill(json.dumps(flow["parameters"]))
    await page.get_by_role("button", name="Import").click()
    slug_error = page.locator("#workflow_slug-error")
    await expect(slug_error).to_contain_text("lowercase letters")
    await expect(page.locator("#workflow_json-error")).to_contain_text("Export (API)")
    await expect(page.get_by_label("Slug")).to_have_attribute("aria-invalid", "true")
    await assert_accessible(page)
    await screenshot(page, "workflow-import-errors", full_page=True)

    await page.get_by_label("Slug").fill("img2img")
    graph_file = tmp_path / "img2img.json"
    graph_file.write_text(json.dumps(flow["workflow_json"]))
    await page.set_input_files("#workflow_file", str(graph_file))  # the script loads it
    await expect(page.get_by_label("Graph (API-format JSON)")).to_have_value(
        re.compile("LoadImage")
    )
    await page.get_by_label("Required agent labels (comma-separated)").fill("gpu, comfyui")
    await page.get_by_role("button", name="Import").click()
    await expect(page.get_by_role("heading", name="Image to image", level=1)).to_be_visible()
    await expect(page.get_by_role("status")).to_contain_text("Imported as version 1")
    workflow_url = page.url.split("?")[0]
    await assert_accessible(page)

    # The run form, generated from the parameters: text, number with bounds, select, file.
    steps = page.get_by_label("steps (optional)")
    await expect(steps).to_have_attribute("max", "150")
    await expect(page.get_by_label("sampler (optional)")).to_have_js_property("tagName", "SELECT")
    image = tmp_path / "fox.png"
    image.write_bytes(make_png(64, 64, b"fox"))
    # Keyboard only: type the prompt, Tab through the form (steps, the file chooser opened
    # with Space), and Enter on the Run button.
    await page.get_by_label("Prompt").focus()
    await page.keyboard.type("a red fox in the snow")
    # Listen for the file chooser before any key is pressed: Playwright turns on Chromium's
    # chooser interception without waiting for a reply, so a listener added just before the
    # key press can lose the race on a loaded machine and the chooser is dropped.
    choosers: asyncio.Queue[FileChooser] = asyncio.Queue()
    page.on("filechooser", choosers.put_nowait)
    await page.evaluate("0")  # a round trip: the interception request has reached the browser
    visited = []
    async with asyncio.timeout(45):  # a bound for a loop, not a speed check
        while True:
            await page.keyboard.press("Tab")
            focused = await page.evaluate(
                "document.activeElement.id || document.activeElement.textContent.trim()"
            )
            visited.append(focused)
            if focused == "param-steps":
                await page.keyboard.press("Control+A")
                await page.keyboard.type("12")
            elif focused == "param-init_image":
                await page.keyboard.press("Space")
                chooser = await asyncio.wait_for(choosers.get(), 15)
                await chooser.set_files(str(image))
                await expect(page.locator("[data-upload-status='p.init_image']")).to_contain_text(
                    "Uploaded fox.png"
                )
            elif focused == "Run":
                break
    assert visited[:2] == ["param-negative", "param-steps"], visited
    await expect(steps).to_have_value("12")
    await screenshot(page, "workflow", full_page=True)
    await page.keyboard.press("Enter")

    # The task page follows the event stream: the progress bar moves as ComfyUI steps.
    await expect(page).to_have_url(re.compile(r"/tasks/[0-9a-f-]{36}$"))
    task_url = page.url
    progress = page.locator("[data-task-progress]")
    value = "document.querySelector('[data-task-progress]').value"
    first = await until(page, f"{value} > 0 && {value} < 60 && {value}")
    await expect(page.locator("[data-task-step]")).to_contain_text("step")
    await expect(page.locator("[data-task-status]")).to_have_text("running")
    await assert_accessible(page)
    await screenshot(page, "task-running")
    later = await until(page, f"{value} > {first} && {value} < 100 && {value}")
    assert first < later < 100
    # Completed: the page reloads with the outputs gallery; the image really loads.
    await expect(page.locator("[data-task-status]")).to_have_text("completed", timeout=30_000)
    gallery_image = page.locator(".gallery img").first
    await expect(gallery_image).to_be_visible()
    image_loaded = "document.querySelector('.gallery img')"
    await until(page, f"{image_loaded}.complete && {image_loaded}.naturalWidth > 0")
    await expect(progress).to_have_js_property("value", 100)
    await assert_accessible(page)
    await screenshot(page, "task-completed", full_page=True)
    task_id = task_url.rsplit("/", 1)[-1]
    assert len(list(stack.comfy.input_dir.iterdir())) == 1  # the agent uploaded fox.png
    async with stack.server.ctx.db.read() as session:
        submitted = await session.get(Task, task_id)
    assert submitted is not None
    assert submitted.parameters["prompt"] == "a red fox in the snow"  # what was typed
    assert submitted.parameters["steps"] == 12
    assert submitted.parameters["init_image"]  # the file key of the upload

    # Tasks: the list with its status filter.
    await page.get_by_role("link", name="Tasks", exact=True).click()
    await (
        page.get_by_role("navigation", name="Filter by status")
        .get_by_role("link", name="completed")
        .click()
    )
    await expect(page.get_by_role("link", name=task_id[:8])).to_be_visible()
    await assert_accessible(page)
    await screenshot(page, "tasks")
    await (
        page.get_by_role("navigation", name="Filter by status")
        .get_by_role("link", name="failed")
        .click()
    )
    await expect(page.get_by_text("No task with status failed")).to_be_visible()

    # History: import again (version 2), preview version 1, restore it (version 3).
    response = await stack.api.post(
        "/workflows/import",
        headers=stack.owner_headers,
        json={**flow, "display_name": "Image to image", "description": "sharper"},
    )
    assert response.status_code == 200, response.text
    await page.goto(workflow_url)
    await page.get_by_role("link", name="Preview version 1").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("version 1")
    await expect(page.get_by_label("Graph JSON")).to_contain_text("LoadImage")
    await assert_accessible(page)
    await screenshot(page, "workflow-snapshot")
    await page.get_by_role("button", name="Restore this version").click()
    await expect(page.get_by_role("status")).to_contain_text("Restored version 1 as version 3")

    # Another task's outputs: a video and an audio file play in the page, a text file is a
    # download link, a text preview is shown as text.
    await media_outputs(page, stack, screenshot)


def media_graph() -> dict[str, Any]:
    graph = text_to_image()
    graph["5"]["inputs"].update(width=32, height=32)
    return add_media_outputs(graph, audio_seconds=2.0, caption="a fox, walking")


async def media_outputs(page: Any, stack: Stack, screenshot: Screenshot) -> None:
    stack.comfy.step_delay = 0  # nothing to watch here
    body = text_to_image_workflow("media", workflow_json=media_graph(), display_name="Media")
    imported = await stack.api.post("/workflows/import", headers=stack.owner_headers, json=body)
    assert imported.status_code == 200, imported.text
    run = await stack.api.post(
        "/r/workflows/slug/media/run",
        headers=stack.owner_headers,
        json={"parameters": {"prompt": "a fox"}},
    )
    assert run.status_code == 202, run.text
    task_id = run.json()["task_id"]
    done = await wait_for_status(
        stack.api, stack.owner_headers, task_id, "completed", "failed", timeout=30
    )
    assert done["task_status"] == "completed", done
    await page.goto(f"{stack.url}/tasks/{task_id}")
    gallery = page.locator(".gallery")
    await expect(gallery.locator("video")).to_have_count(1)
    await expect(gallery.locator("video")).to_have_attribute("aria-label", re.compile(r"\.mp4$"))
    await expect(gallery.locator("audio")).to_have_count(1)
    await expect(gallery.locator("audio")).to_have_attribute("aria-label", re.compile(r"\.flac$"))
    await expect(gallery.locator("img")).to_have_count(1)  # SaveImage, as before
    text_file = gallery.get_by_role("link", name=re.compile(r"^notes.*\.txt$"))
    await expect(text_file).to_have_attribute("download", re.compile(r"\.txt$"))
    await expect(page.get_by_role("heading", name="Text outputs")).to_be_visible()
    await expect(page.locator("pre.code")).to_have_text("a fox, walking")
    # Each plays or downloads from its own output link (a redirect to a signed link).
    statuses = await page.evaluate(
        """async () => Promise.all([...document.querySelectorAll(
            '.gallery video, .gallery audio, .gallery a[download]')].map(
            async (el) => { const r = await fetch(el.src || el.href);
                            return [r.status, r.headers.get('content-type')]; }))"""
    )
    types = sorted(content_type.split(";")[0] for status, content_type in statuses)
    assert {status for status, _ in statuses} == {200}, statuses
    assert {"video/mp4", "audio/flac", "text/plain"} <= set(types), types
    await assert_accessible(page)
    await screenshot(page, "task-media", full_page=True)


async def test_access_keys_members_webhooks_and_device_pairing(
    page: Any, stack: Stack, tmp_path: Path, screenshot: Screenshot, receiver: WebhookReceiver
) -> None:
    await sign_in(page, stack, screenshot)
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))

    # A key: the secret once, then revoked.
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Access").click()
    await assert_accessible(page)
    await page.get_by_label("Name", exact=True).first.fill("CI pipeline")
    await page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("Secret")
    await expect(secret).to_have_value(re.compile(r"^sk-"))
    raw = await secret.input_value()
    check = await stack.api.get("/r/tasks", headers={"Authorization": f"Bearer {raw}"})
    assert check.status_code == 200
    await assert_accessible(page)
    await screenshot(page, "access-new-key", full_page=True)
    row = page.locator("tr").filter(has_text="CI pipeline")
    await row.get_by_role("button", name="Revoke CI pipeline").click()
    await expect(page.get_by_role("status")).to_contain_text("Key revoked")
    await expect(page.locator("tr").filter(has_text="CI pipeline")).to_contain_text("revoked")
    assert raw not in await page.content()
    check = await stack.api.get("/r/tasks", headers={"Authorization": f"Bearer {raw}"})
    assert check.status_code == 401

    await members_and_invitations(page, stack, screenshot)
    await webhook_log(page, stack, screenshot, receiver)

    # `runyard login` (no bootstrap file): it prints the pairing link; approve it here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "config"), "COLUMNS": "200"}
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runyard.cli.main",
        "login",
        "--server",
        stack.url,
        "--name",
        "laptop",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert cli.stderr is not None
        link = ""
        async with asyncio.timeout(30):
            while not link:
                line = (await cli.stderr.readline()).decode()
                assert line, "runyard login ended without printing a link"
                found = re.search(r"(http://\S+/desktop/pair\?user_code=\S+)", line)
                link = found.group(1) if found else ""
        await page.goto(link)
        code = link.rsplit("=", 1)[-1]
        await expect(page.get_by_label("Code shown by the device")).to_have_value(code)
        await expect(page.get_by_label("Team the device works for")).to_contain_text("Render farm")
        await page.get_by_label("Device name (optional)").fill("Ada's laptop")
        await assert_accessible(page)
        await screenshot(page, "pair")
        await page.get_by_role("button", name="Approve").click()
        await expect(page.get_by_role("heading", name="Device approved")).to_be_visible()
        await assert_accessible(page)
        await screenshot(page, "pair-approved")
        async with asyncio.timeout(30):
            _, err = await cli.communicate()
        assert cli.returncode == 0, err.decode()
        assert f"as {EMAIL}" in err.decode()
    finally:
        if cli.returncode is None:
            cli.kill()
            await cli.wait()
    stored = json.loads((tmp_path / "config" / "runyard" / "config.json").read_text())
    assert stored["api_key"].startswith("dk-")

    # A denied code: the device is refused at once.
    start = (await stack.api.post("/desktop/pair/start")).json()
    await page.goto(start["verification_uri"])
    await page.get_by_role("button", name="Deny").click()
    await expect(page.get_by_role("heading", name="Device denied")).to_be_visible()
    poll = await stack.api.post("/desktop/pair/poll", json={"device_code": start["device_code"]})
    assert poll.status_code == 404

    # A narrow screen (a phone): the same pages, reflowed.
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(stack.url + "/access")
    await expect(page.get_by_role("heading", name="Keys")).to_be_visible()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    await assert_accessible(page)
    await screenshot(page, "access-narrow")
    await page.goto(stack.url + "/agents")
    await expect(page.locator("table[data-live-agents]")).to_contain_text("gpu-box-1")
    await screenshot(page, "agents-narrow")


async def members_and_invitations(page: Any, stack: Stack, screenshot: Screenshot) -> None:
    """Grace is invited; she joins from her own dashboard; her role is changed."""
    grace = "grace@example.com"
    body = {"email_address": grace, "user_password": PASSWORD, "first_name": "Grace"}
    assert (await stack.api.post("/auth/register", json=body)).status_code == 200
    members = page.locator("section[aria-labelledby=members-heading]")
    await members.get_by_label("Email").fill(grace)
    await members.get_by_label("Role", exact=True).select_option("viewer")
    await members.get_by_role("button", name="Invite").click()
    token = await page.get_by_label("Invitation token").input_value()
    assert token.startswith("inv-")

    # Grace, in her own browser: Teams → Join a team.
    context = await page.context.browser.new_context(viewport={"width": 1200, "height": 820})
    try:
        tab = await context.new_page()
        await tab.goto(stack.url + "/teams")
        await tab.get_by_label("Email").fill(grace)
        await tab.get_by_label("Password").fill(PASSWORD)
        await tab.get_by_role("button", name="Sign in").click()
        await expect(tab.get_by_role("heading", name="Teams", level=1)).to_be_visible()
        await tab.get_by_label("Invitation token").fill(token[:-2])
        await tab.get_by_role("button", name="Join").click()
        await expect(tab.locator("#invitation_token-error")).to_contain_text("not found")
        await expect(tab.get_by_label("Invitation token")).to_have_attribute("aria-invalid", "true")
        await assert_accessible(tab)
        await tab.get_by_label("Invitation token").fill(token)
        await tab.get_by_role("button", name="Join").click()
        await expect(tab.get_by_role("status")).to_contain_text("You joined the team")
        joined = tab.locator("tr").filter(has_text="Render farm")
        await expect(joined).to_contain_text("viewer")
        await expect(joined).to_contain_text("shown now")
        await expect(tab.get_by_label("Team", exact=True)).to_have_value(stack.team_id)
        await assert_accessible(tab)
        await screenshot(tab, "teams", full_page=True)
    finally:
        await context.close()

    # The owner sees her and makes her a member; a second invitation is revoked.
    await page.goto(stack.url + "/access")
    await page.get_by_label(f"Role of {grace}").select_option("member")
    await page.get_by_role("button", name=f"Change the role of {grace}").click()
    await expect(page.get_by_role("status")).to_contain_text("Role changed")
    await expect(page.get_by_label(f"Role of {grace}")).to_have_value("member")
    listed = await stack.api.get("/members", headers=stack.owner_headers)
    roles = {m["email_address"]: m["member_role"] for m in listed.json()["member_list"]}
    assert roles == {EMAIL: "owner", grace: "member"}
    await members.get_by_label("Email").fill("lin@example.com")
    await members.get_by_role("button", name="Invite").click()
    await expect(page.get_by_label("Invitation token")).to_have_value(re.compile("^inv-"))
    await assert_accessible(page)
    await screenshot(members, "access-members")
    await page.get_by_role("button", name="Revoke the invitation of lin@example.com").click()
    await expect(page.get_by_role("status")).to_contain_text("Invitation revoked")
    await expect(members).not_to_contain_text("lin@example.com")


async def webhook_log(
    page: Any, stack: Stack, screenshot: Screenshot, receiver: WebhookReceiver
) -> None:
    """A webhook to a receiver: ping it, read the delivery log, redeliver, rotate the secret."""
    hooks = page.locator("section[aria-labelledby=hooks-heading]")
    await hooks.get_by_label("Name").fill("Build bot")
    await hooks.get_by_label("URL").fill(receiver.url)
    await hooks.get_by_role("button", name="Add webhook").click()
    first_secret = await page.get_by_label("Signing secret").input_value()
    assert first_secret.startswith("whsec_")
    await page.get_by_role("link", name="Delivery log of Build bot").click()
    await expect(page.get_by_role("heading", name="Webhook: Build bot")).to_be_visible()
    await expect(page.get_by_text("Nothing delivered yet.")).to_be_visible()

    async def log_shows(attempts: int) -> None:
        async with asyncio.timeout(15):
            while (
                await page.locator("tbody [data-attempt]").count() < attempts
                or await page.locator("tbody .status-pending").count()
            ):
                await asyncio.sleep(0.1)
                await page.get_by_role("link", name="Refresh").click()

    await page.get_by_role("button", name="Send a ping").click()
    await expect(page.get_by_role("status")).to_contain_text("Ping queued")
    await log_shows(1)
    row = page.locator("tbody tr").filter(has_text="ping")
    await expect(row.locator(".status")).to_have_text("delivered")
    await expect(row).to_contain_text("#1")
    await expect(row).to_contain_text("HTTP 204")
    await row.get_by_role("button", name=re.compile("^Redeliver")).click()
    await expect(page.get_by_role("status")).to_contain_text("Delivery queued again")
    await log_shows(2)
    await expect(row).to_contain_text("#2")
    await assert_accessible(page)
    await screenshot(page, "webhook-log", full_page=True)
    # The receiver got the same delivery twice (same webhook-id), signed with the secret the
    # page showed.
    assert len(receiver.received) == 2
    (headers, payload), (again, _) = receiver.received
    assert headers["webhook-id"] == again["webhook-id"]
    assert json.loads(payload)["event_type"] == "ping"
    expected = standard_signature(
        first_secret, headers["webhook-id"], int(headers["webhook-timestamp"]), payload
    )
    assert headers["webhook-signature"] == expected

    await page.get_by_role("button", name="Rotate the secret").click()
    rotated = await page.get_by_label("Signing secret").input_value()
    assert rotated.startswith("whsec_") and rotated != first_secret
    listed = await stack.api.get("/webhooks", headers=stack.owner_headers)
    hook_id = listed.json()["webhook_list"][0]["id"]
    stored = await stack.api.get(f"/webhooks/{hook_id}", headers=stack.owner_headers)
    assert stored.json()["webhook_secret"] == rotated
    await assert_accessible(page)


async def test_a_workflows_parameters_fit_a_wide_screen(
    page: Any, stack: Stack, screenshot: Screenshot
) -> None:
    """At 1400 px the parameters table is not cut off (it had half the page, and scrolled)."""
    await page.set_viewport_size({"width": 1400, "height": 900})
    body = image_workflow("wide", display_name="Wide")
    imported = await stack.api.post("/workflows/import", headers=stack.owner_headers, json=body)
    assert imported.status_code == 200, imported.text
    await sign_in(page, stack, screenshot)
    await page.goto(f"{stack.url}/workflows/{imported.json()['id']}")
    table = page.locator("section[aria-labelledby='params-heading'] .table-wrap")
    await expect(table).to_be_visible()
    overflow = await table.evaluate("el => el.scrollWidth - el.clientWidth")
    assert overflow <= 0, f"the parameters table is cut off by {overflow} px"

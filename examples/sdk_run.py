# ruff: noqa: T201
"""Run the example workflow with the Python SDK and download what it makes.

    runyard up --with-agent --simulate          # in one terminal
    python examples/sdk_run.py                  # in another (from the repository root)

It signs in as the owner `runyard up` created (runyard-data/bootstrap.json), imports the
example workflow, runs it with a progress line, and saves the outputs under ./outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

from runyard.client import DownloadProgress, Runyard, TaskEvent

boot = json.loads(Path("runyard-data/bootstrap.json").read_text())

# Importing workflows is an admin's job: sign in as the owner (a session).
with Runyard(boot["server_url"], email=boot["email"], password=boot["password"]) as owner:
    owner.import_workflow_file(
        "examples/text-to-image.json",
        slug="text-to-image",
        parameters="examples/text-to-image.params.json",
        display_name="Text to image",
    )

# Running it needs only the integration key.
with Runyard(boot["server_url"], api_key=boot["api_key"]) as runyard:

    def show(event: TaskEvent) -> None:
        if event.event == "progress" and event.progress is not None:
            node = f"  node {event.current_node}" if event.current_node else ""
            print(f"  {event.progress:4.0%}{node}")
        elif event.status:
            print(f"  {event.status}")

    task = runyard.run(
        "text-to-image", {"prompt": "a red fox in the snow", "steps": 20}, wait=True, on_event=show
    )
    if not task.ok:
        raise SystemExit(f"task {task.id} {task.task_status}: {task.task_error}")

    def downloaded(step: DownloadProgress) -> None:
        if step.done == step.total:
            print(f"  saved {step.filename} ({step.done:,} bytes)")

    files = runyard.download_outputs(task.id, "outputs", progress=downloaded)
    print(f"task {task.id} completed; {len(files)} file(s) in ./outputs")

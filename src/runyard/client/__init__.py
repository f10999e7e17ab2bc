"""The Runyard Python SDK: ``Runyard`` (blocking) and ``AsyncRunyard`` (asyncio).

Needs only httpx and pydantic; it never imports the server::

    from runyard.client import Runyard

    with Runyard("http://127.0.0.1:8080", api_key="sk-…") as runyard:
        task = runyard.run("text-to-image", {"prompt": "a red fox"}, wait=True)
        runyard.download_outputs(task.id, "out/")
"""

from runyard.client.aio import AsyncRunyard
from runyard.client.errors import RunyardError
from runyard.client.models import (
    Agent,
    CreatedKey,
    CreatedWebhook,
    Delivery,
    DeliveryAttempt,
    DownloadProgress,
    Key,
    Page,
    PairingResult,
    PairingStart,
    Parameter,
    Task,
    TaskEvent,
    TaskResult,
    TeamRef,
    UploadProgress,
    User,
    Webhook,
    Workflow,
)
from runyard.client.sync import Runyard
from runyard.domain.tasks import TaskStatus

__all__ = [
    "Agent",
    "AsyncRunyard",
    "CreatedKey",
    "CreatedWebhook",
    "Delivery",
    "DeliveryAttempt",
    "DownloadProgress",
    "Key",
    "Page",
    "PairingResult",
    "PairingStart",
    "Parameter",
    "Runyard",
    "RunyardError",
    "Task",
    "TaskEvent",
    "TaskResult",
    "TaskStatus",
    "TeamRef",
    "UploadProgress",
    "User",
    "Webhook",
    "Workflow",
]

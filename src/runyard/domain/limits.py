"""Every limit a user can hit, declared once.

The wire schemas (``runyard.schemas``), the API's query parameters, the dashboard's forms and
messages, the CLI and the services all read these names, so a limit changes in one place and
every surface refuses the same values with the same words. Values here are part of the public
contract (the OpenAPI document shows them): changing one is an API change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from runyard.domain.errors import BadRequest
from runyard.domain.text import UNSTORABLE_TEXT, find_unstorable


@dataclass(frozen=True)
class IntRange:
    """An inclusive range of whole numbers a field must fall in, with its one message."""

    field: str
    low: int
    high: int

    @property
    def problem(self) -> str:
        """What is wrong with a value outside the range (without the field's name)."""
        return f"must be a whole number from {self.low} to {self.high}"

    @property
    def message(self) -> str:
        """The ``error_message`` every surface gives for a value outside the range."""
        return f"{self.field}: {self.problem}"

    def __contains__(self, value: object) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
        )

    def check(self, value: object) -> int:
        """``value`` when it is in range; else ``BadRequest`` with :attr:`message`."""
        if value not in self:
            raise BadRequest(self.message)
        assert isinstance(value, int)
        return value


# -- tasks ---------------------------------------------------------------------------------------

#: A task's ``priority``: higher runs first.
PRIORITY = IntRange("priority", -1000, 1000)
#: Most runs one batch request (``POST …/runs``, the dashboard's Runs field) may submit.
MAX_RUNS_PER_REQUEST = 100

# -- pages ---------------------------------------------------------------------------------------

#: ``per_page`` of every list route.
PER_PAGE = IntRange("per_page", 1, 100)
PER_PAGE_DEFAULT = 20
#: Highest ``current_page`` of the API (and of the dashboard's ``page``).
MAX_PAGE = 1_000_000

# -- accounts, teams, keys -----------------------------------------------------------------------

#: Team names, key names, device names, first and last names.
NAME_MAX = 100
#: A user's display name.
DISPLAY_NAME_MAX = 200
EMAIL_MAX = 320
PASSWORD_MIN = 8
PASSWORD_MAX = 256
#: Invitation, refresh and device-code tokens as sent back by clients.
TOKEN_MAX = 4096
USER_CODE_MAX = 32
#: ``expires_in_days`` of a new key.
KEY_EXPIRY_DAYS = IntRange("expires_in_days", 1, 365)

# -- workflows -----------------------------------------------------------------------------------

SLUG_MIN = 2
SLUG_MAX = 100
WORKFLOW_NAME_MAX = 255
DESCRIPTION_MAX = 2000
#: Parameters one workflow may define.
MAX_PARAMETERS = 200
PARAM_KEY_MAX = 100
#: Labels, ``preferred_gpu``, ``submitter_region``, node ids.
LABEL_MAX = 100
#: ``required_labels`` of one workflow.
MAX_LABELS = 50
MAX_REQUIRED_MODELS = 200
#: Parameter labels, model names, ``accept`` entries, ``source_key``, node input names.
SHORT_TEXT_MAX = 255
TARGET_PATH_MAX = 500
MAX_OPTIONS = 1000
MAX_ACCEPT = 100
#: Nodes of one workflow graph.
MAX_NODES = 20_000
#: ``task_timeout`` in seconds (0: none).
TASK_TIMEOUT = IntRange("task_timeout", 0, 7 * 24 * 3600)
MAX_RETRIES = IntRange("max_retries", 0, 20)
#: Retries of a new workflow's tasks unless it says otherwise: a transient failure (an agent
#: lost, ComfyUI restarted, out of memory) is tried again; one that would only fail again
#: (an invalid graph, a missing node or model) never is, whatever this says.
DEFAULT_MAX_RETRIES = 2
MIN_VRAM_GB = IntRange("min_vram_gb", 0, 4096)
#: Workflow versions are a 32-bit column.
MAX_VERSION = 2**31 - 1

# -- files ---------------------------------------------------------------------------------------

FILE_NAME_MAX = 255
FILE_KEY_MAX = 1024
CONTENT_TYPE_MIN = 3
CONTENT_TYPE_MAX = 255
MAX_FILE_SIZE = 2**62
#: Parts of one multipart upload (S3's own limit).
MAX_PARTS = 10_000
ETAG_MAX = 200

# -- what a task carries ------------------------------------------------------------------------
#
# Sized so that a task always fits in the frames that carry it: the rendered graph (which holds
# the parameters' values) and the parameters again in one ``dispatch`` frame stay well under
# ``FRAME_MAX_BYTES``. A task that would not fit is refused at submit, never dispatched.

MIB = 1024 * 1024
#: One parameter's value, as JSON (UTF-8).
PARAM_VALUE_MAX_BYTES = 1 * MIB
#: All of a task's parameters together, as JSON.
PARAMETERS_MAX_BYTES = 2 * MIB
#: The workflow graph with the parameters injected, as JSON.
GRAPH_MAX_BYTES = 8 * MIB
#: The largest WebSocket frame either side accepts unless it says less in ``hello`` /
#: ``welcome`` (the agent's own limit; the server's is uvicorn's ``ws_max_size`` default).
FRAME_MAX_BYTES = 16 * MIB
#: A log line an agent sends is cut to this many characters.
LOG_LINE_MAX = 4096
#: Dispatches of one task that may end without the attempt starting (no ACK, handed back)
#: before the task fails instead of being sent again.
MAX_UNSTARTED_DISPATCHES = 10


def _size(count: int) -> str:
    return f"{count:,} bytes" + (f" ({count // MIB} MiB)" if count % MIB == 0 else "")


def json_size(value: object, where: str) -> int:
    """Bytes of ``value`` as JSON (UTF-8); ``BadRequest`` naming ``where`` when JSON or the
    databases cannot hold it (NUL characters, unpaired surrogates)."""
    if find_unstorable(value) is not None:
        raise BadRequest(f"{where}: {UNSTORABLE_TEXT}")
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def check_task_size(
    parameters: dict[str, object], graph: object, template_bytes: int | None = None
) -> None:
    """Refuse a task whose parameters or rendered graph are over the limits above, naming the
    parameter and the limit. ``template_bytes``: the graph's size before the parameters went
    in, if known; the rendered graph is then measured only when that plus the parameters
    could be over the limit (measuring costs a serialisation on every submit)."""
    total = 2
    for key, value in parameters.items():
        size = json_size(value, f"parameter {key!r}")
        if size > PARAM_VALUE_MAX_BYTES:
            raise BadRequest(
                f"parameter {key!r} is {size:,} bytes; a value may be at most "
                f"{_size(PARAM_VALUE_MAX_BYTES)}"
            )
        total += size + len(key) + 4
    if total > PARAMETERS_MAX_BYTES:
        raise BadRequest(
            f"the parameters are {total:,} bytes together; at most {_size(PARAMETERS_MAX_BYTES)}"
        )
    if template_bytes is not None and template_bytes + total <= GRAPH_MAX_BYTES:
        return
    size = json_size(graph, "workflow")
    if size > GRAPH_MAX_BYTES:
        raise BadRequest(
            f"the workflow graph with its parameters is {size:,} bytes; at most "
            f"{_size(GRAPH_MAX_BYTES)}"
        )


# -- agents ------------------------------------------------------------------------------------

#: An agent's id (``--agent-id``, ``hello.agent_id``, ``/agents/{agentId}``).
AGENT_ID_MAX = 200
AGENT_ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"
#: Labels one agent may advertise (each at most ``LABEL_MAX`` characters).
MAX_AGENT_LABELS = 100
#: Attempts one agent runs at once (``--capacity``).
CAPACITY = IntRange("capacity", 1, 256)
#: Lines of one ``log`` frame, the length of a ``fail`` frame's error, outputs of one
#: ``upload_request``.
MAX_LOG_LINES = 1000
ERROR_MAX = 10_000
MAX_UPLOADS = 1000

# -- webhooks ------------------------------------------------------------------------------------

WEBHOOK_NAME_MAX = 255
WEBHOOK_URL_MAX = 2048
MAX_WEBHOOK_EVENTS = 20
EVENT_NAME_MAX = 50

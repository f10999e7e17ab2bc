"""A JSON body sent without saying so is read as JSON.

``curl -d '{…}'`` labels its body ``application/x-www-form-urlencoded``, and scripts often send
none at all; FastAPI reads neither as JSON, so the documented examples answered ``request body
must be a JSON object``. The API takes no form bodies, so under ``/api/v1`` a body labelled
that way (or not at all) whose first character opens a JSON object or array is passed on as
``application/json``. Everything else is left as it came.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runyard.objects.local import OBJECTS_PATH

API_PREFIX = "/api/v1/"
_UNLABELLED = (b"", b"application/x-www-form-urlencoded")
_JSON_START = (b"{", b"[")


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("POST", "PUT", "PATCH", "DELETE")
            or not scope["path"].startswith(API_PREFIX)
            # File bytes through signed links: never read here (they may go zero-copy).
            or scope["path"].startswith(OBJECTS_PATH)
        ):
            await self.app(scope, receive, send)
            return
        headers = list(scope.get("headers", []))
        labels = [value for name, value in headers if name == b"content-type"]
        label = labels[0].split(b";", 1)[0].strip().lower() if labels else b""
        if label not in _UNLABELLED:
            await self.app(scope, receive, send)
            return
        first = await receive()
        body = first.get("body", b"") if first["type"] == "http.request" else b""
        if body.lstrip()[:1] in _JSON_START:
            headers = [(n, v) for n, v in headers if n != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        await self.app(scope, replay, send)

"""A real S3 API on loopback for tests: moto's server mode, plus the SigV4 check S3 does.

moto serves the S3 API over HTTP but does not verify presigned URLs (their signature, the
headers they sign, their expiry). Real S3 does, and the storage contract depends on it
(``403`` for a missing signed header, a wrong ``Content-Length``, a tampered or expired link).
So a small WSGI layer in front of moto recomputes every presigned request's signature with
botocore's own SigV4 signer, from the headers the request really carries, and refuses it with
``403`` the way S3 does. Requests signed in the ``Authorization`` header (boto3 API calls) pass.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, quote

import boto3
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from runyard.config import StorageSettings

ACCESS_KEY = "runyard-test"
SECRET_KEY = "runyard-test-secret"
REGION = "us-east-1"

_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error>"
)


class PresignCheck:
    """WSGI middleware: verify SigV4 query-string signatures like S3 (``403`` otherwise)."""

    def __init__(self, app: Any, now: Callable[[], float]) -> None:
        self.app = app
        self.now = now
        self.credentials = Credentials(ACCESS_KEY, SECRET_KEY)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        params = dict(query)
        if "X-Amz-Signature" not in params:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        problem = self.problem(environ, query, params)
        if problem is not None:
            code, message = problem
            body = _ERROR.format(code=code, message=message).encode()
            start_response(
                "403 Forbidden",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return self.app(environ, start_response)  # type: ignore[no-any-return]

    def problem(
        self, environ: dict[str, Any], query: list[tuple[str, str]], params: dict[str, str]
    ) -> tuple[str, str] | None:
        stamp = params.get("X-Amz-Date", "")
        try:
            signed_at = time.mktime(time.strptime(stamp, "%Y%m%dT%H%M%SZ")) - time.timezone
            expires = int(params["X-Amz-Expires"])
        except (KeyError, ValueError):
            return "AuthorizationQueryParametersError", "bad X-Amz-Date or X-Amz-Expires"
        if self.now() > signed_at + expires:
            return "AccessDenied", "Request has expired"
        names = params.get("X-Amz-SignedHeaders", "").split(";")
        headers: dict[str, str] = {}
        for name in names:
            key = "HTTP_" + name.upper().replace("-", "_")
            if name == "content-length":
                key = "CONTENT_LENGTH"
            elif name == "content-type":
                key = "CONTENT_TYPE"
            if key in environ and environ[key] != "":
                headers[name] = environ[key]
        # The URL as it was presigned: the path, the query without the X-Amz-* auth params.
        host = environ.get("HTTP_HOST", "")
        path = quote(environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8"), safe="/~")
        # S3 canonicalises the query by decoding and URI-encoding every name and value.
        encoded = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
            for k, v in query
            if k != "X-Amz-Signature"
        )
        url = f"http://{host}{path}?{encoded}"
        request = AWSRequest(method=environ["REQUEST_METHOD"], url=url, headers=headers)
        request.context["timestamp"] = stamp
        auth = S3SigV4QueryAuth(self.credentials, "s3", REGION, expires=expires)
        canonical = auth.canonical_request(request)
        expected = auth.signature(auth.string_to_sign(request, canonical), request)
        if expected != params["X-Amz-Signature"] or sorted(headers) != sorted(names):
            return "SignatureDoesNotMatch", "The request signature we calculated does not match"
        return None


class CheckedMotoServer(ThreadedMotoServer):
    """moto's threaded server with :class:`PresignCheck` in front of it."""

    def __init__(self, now: Callable[[], float]) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.now = now

    def _server_entry(self) -> None:
        app = PresignCheck(DomainDispatcherApplication(create_backend_app), self.now)
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"


def s3_settings(server: CheckedMotoServer, bucket: str) -> StorageSettings:
    settings = StorageSettings(
        backend="s3",
        s3_endpoint_url=server.url,
        s3_bucket=bucket,
        s3_region=REGION,
        s3_access_key_id=ACCESS_KEY,
        s3_addressing_style="path",
    )
    settings.s3_secret_access_key = type(settings.s3_secret_access_key)(SECRET_KEY)
    return settings


def make_bucket(server: CheckedMotoServer) -> str:
    bucket = f"runyard-{secrets.token_hex(6)}"
    client = boto3.client(
        "s3",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )
    client.create_bucket(Bucket=bucket)
    client.close()
    return bucket

"""The ``local`` backend: objects are files under one folder; this server serves the links.

Layout under the root: each object at ``<root>/<key>``; uploads in flight in ``<root>/.tmp``;
multipart uploads in ``<root>/.multipart/<upload id>/`` (``data`` written part by part at its
offset, ``info`` with the target key, ``parts/<n>`` once part ``n`` is whole). A finished
upload is published with ``link(2)``, which fails if the key exists: no overwrite, even when
two uploads race.

Everything here is private to the server's user: the root and every folder under it are made
0700 and every file 0600 (uploads, outputs, parts, markers), whatever the umask; a root found
looser at start is tightened, with a warning.

The HTTP side (signature checks, streaming) is :mod:`runyard.objects.http`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

from runyard.logging import get_logger
from runyard.objects.keys import BadName, check_key
from runyard.objects.port import (
    InvalidUpload,
    ObjectExists,
    ObjectInfo,
    PartSpec,
    SignedLink,
    UploadedPart,
)
from runyard.objects.signing import EXPIRES_PARAM, SIGNATURE_PARAM, LinkSigner
from runyard.security.filemodes import (
    PRIVATE_DIR,
    create_private_file,
    make_private_dir,
    tighten,
    write_private,
)

log = get_logger("runyard.objects")

#: Mount point of the link routes, under the API prefix.
OBJECTS_PATH = "/api/v1/objects/"
_UPLOAD_ID_LENGTH = 32


def _check_upload_id(upload_id: str) -> str:
    if len(upload_id) != _UPLOAD_ID_LENGTH or not all(c in "0123456789abcdef" for c in upload_id):
        raise InvalidUpload("unknown multipart upload")
    return upload_id


class LocalObjectStore:
    name = "local"

    def __init__(
        self,
        root: Path,
        secret: str,
        base_url: Callable[[], str],
        now: Callable[[], datetime],
    ) -> None:
        self.root = root.resolve()
        self.signer = LinkSigner(secret)
        self._base_url = base_url
        self.now = now
        self.tmp_dir = self.root / ".tmp"
        self.multipart_dir = self.root / ".multipart"
        # Files under a 0700 root are out of other users' reach, whatever their own modes.
        fixed = tighten(self.root, PRIVATE_DIR)
        if fixed is not None:
            log.warning("objects_dir_permissions_fixed", **fixed.fields())

    def make_dirs(self, path: Path) -> None:
        """Create ``path`` (under the root) and its missing parents, each 0700."""
        make_private_dir(self.root)
        missing = []
        while path != self.root and path.is_relative_to(self.root) and not path.is_dir():
            missing.append(path)
            path = path.parent
        for folder in reversed(missing):
            make_private_dir(folder)

    # -- paths -------------------------------------------------------------------------------

    def path_of(self, key: str) -> Path:
        """The file of a key; never outside the root (the key is checked first)."""
        check_key(key)
        path = self.root / key
        if not path.resolve().is_relative_to(self.root):
            raise BadName("key escapes the storage folder")
        return path

    def upload_dir(self, upload_id: str) -> Path:
        return self.multipart_dir / _check_upload_id(upload_id)

    def new_temp_path(self) -> Path:
        """A fresh name in the temporary folder; the caller creates it with ``open_private``."""
        self.make_dirs(self.tmp_dir)
        return self.tmp_dir / secrets.token_hex(16)

    # -- links -------------------------------------------------------------------------------

    def _link(self, method: str, key: str, ttl: int, params: dict[str, str]) -> SignedLink:
        check_key(key)
        expires_at = self.now().replace(microsecond=0) + timedelta(seconds=ttl)
        params = {**params, EXPIRES_PARAM: str(int(expires_at.timestamp()))}
        params[SIGNATURE_PARAM] = self.signer.sign(method, key, params)
        url = f"{self._base_url().rstrip('/')}{OBJECTS_PATH}{quote(key, safe='/')}"
        return SignedLink(f"{url}?{urlencode(params)}", method, expires_at)

    async def presign_put(self, key: str, *, size: int, content_type: str, ttl: int) -> SignedLink:
        link = self._link(
            "PUT", key, ttl, {"size": str(size), "type": content_type, "nomatch": "1"}
        )
        headers = {"Content-Length": str(size), "Content-Type": content_type, "If-None-Match": "*"}
        return SignedLink(link.url, link.method, link.expires_at, headers)

    async def presign_get(
        self,
        key: str,
        *,
        ttl: int,
        content_type: str | None = None,
        file_name: str | None = None,
    ) -> SignedLink:
        params: dict[str, str] = {}
        if content_type:
            params["type"] = content_type
        if file_name:
            params["name"] = file_name
        return self._link("GET", key, ttl, params)

    # -- objects -----------------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo | None:
        path = self.path_of(key)
        try:
            stat = await asyncio.to_thread(path.stat)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        return ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    async def delete(self, key: str) -> None:
        path = self.path_of(key)
        await asyncio.to_thread(self._delete, path)

    def _delete(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()
        # Tidy empty folders up to the root (best effort: another upload may be creating one).
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    async def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> list[ObjectInfo]:
        # Walk the deepest folder the prefix names entirely, then filter by the full prefix.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / folder if folder else self.root
        if folder:
            check_key(folder)
        found: list[ObjectInfo] = []
        if not start.is_dir():
            return found
        for dirpath, dirnames, filenames in os.walk(start):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                path = here / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    found.append(
                        ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))
                    )
        return sorted(found, key=lambda info: info.key)

    def publish(self, temp: Path, key: str) -> None:
        """Move a finished upload into place; :class:`ObjectExists` if the key is taken."""
        final = self.path_of(key)
        self.make_dirs(final.parent)
        try:
            os.link(temp, final)
        except FileExistsError as exc:
            raise ObjectExists(key) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    async def clean_temp(self, older_than: datetime) -> int:
        """Remove uploads that stopped before finishing (a crash mid-upload leaves them)."""

        def clean() -> int:
            removed = 0
            if not self.tmp_dir.is_dir():
                return 0
            for path in self.tmp_dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if datetime.fromtimestamp(path.stat().st_mtime, UTC) < older_than:
                        path.unlink()
                        removed += 1
            return removed

        return await asyncio.to_thread(clean)

    # -- multipart ---------------------------------------------------------------------------

    async def initiate_multipart(self, key: str, *, content_type: str) -> str:
        check_key(key)
        upload_id = secrets.token_hex(_UPLOAD_ID_LENGTH // 2)
        folder = self.upload_dir(upload_id)

        def create() -> None:
            self.make_dirs(folder / "parts")
            create_private_file(folder / "data")
            info = {"key": key, "content_type": content_type}
            write_private(folder / "info", json.dumps(info).encode())

        await asyncio.to_thread(create)
        return upload_id

    def upload_info(self, upload_id: str) -> dict[str, str]:
        try:
            info: dict[str, str] = json.loads((self.upload_dir(upload_id) / "info").read_text())
        except (FileNotFoundError, ValueError) as exc:
            raise InvalidUpload("unknown multipart upload") from exc
        return info

    async def presign_parts(
        self, key: str, upload_id: str, parts: Sequence[PartSpec], *, ttl: int
    ) -> list[SignedLink]:
        _check_upload_id(upload_id)
        links = []
        for part in parts:
            params = {
                "upload": upload_id,
                "part": str(part.number),
                "offset": str(part.offset),
                "size": str(part.size),
            }
            link = self._link("PUT", key, ttl, params)
            headers = {"Content-Length": str(part.size)}
            links.append(SignedLink(link.url, link.method, link.expires_at, headers))
        return links

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[UploadedPart]
    ) -> None:
        folder = self.upload_dir(upload_id)
        await asyncio.to_thread(self._complete, key, folder, upload_id, parts)

    def _complete(
        self, key: str, folder: Path, upload_id: str, parts: Sequence[UploadedPart]
    ) -> None:
        info = self.upload_info(upload_id)
        if info.get("key") != key:
            raise InvalidUpload("the multipart upload belongs to another key")
        numbers = [p.number for p in parts]
        if not parts or numbers != list(range(1, len(parts) + 1)):
            raise InvalidUpload("parts must be listed in order from 1, each once")
        for part in parts:
            marker = folder / "parts" / str(part.number)
            try:
                etag = marker.read_text()
            except FileNotFoundError as exc:
                raise InvalidUpload(f"part {part.number} has not been uploaded") from exc
            if etag.strip('"') != part.etag.strip('"'):
                raise InvalidUpload(f"part {part.number}: ETag does not match")
        extra = sorted(int(p.name) for p in (folder / "parts").iterdir())
        if extra and extra[-1] > len(parts):
            raise InvalidUpload(f"part {extra[-1]} was uploaded but is not listed")
        data = folder / "data"
        with open(data, "rb+") as handle:
            os.fsync(handle.fileno())
        self.publish(data, key)
        shutil.rmtree(folder, ignore_errors=True)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            folder = self.upload_dir(upload_id)
        except InvalidUpload:
            return
        await asyncio.to_thread(shutil.rmtree, folder, True)

    async def close(self) -> None:
        return None

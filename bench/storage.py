"""Storage benchmark: a large upload and download through the local backend's signed links.

    .venv/bin/python bench/storage.py [--size-mb 2048] [--dir DIR]
                                      [--client sendfile|curl|httpx] [--runs N] [--no-zero-copy]

Runs a real ``runyard server`` process (SQLite, local storage in ``DIR``), presigns one input
of ``--size-mb`` through the API, PUTs it to the signed link, then GETs it back through a
signed link (uploads are spliced into the file, downloads go out with ``sendfile(2)``,
unless ``--no-zero-copy``). Prints, for each direction,
the server's peak resident memory (sampled from ``/proc/<pid>/status`` every 10 ms, and the
kernel's high-water mark ``VmHWM``) and the throughput as a ratio of a plain copy of the same
file on the same disk (``shutil.copyfile`` plus ``fsync``, as the server fsyncs an upload
before answering; on Linux that copy runs in the kernel with ``sendfile``), and for uploads
of a user-space copy through a 1 MiB buffer (``dd bs=1M`` plus ``fsync``: the same two copies
per byte a user-space server costs) and of the *loopback floor*: the same bytes pushed with
``sendfile`` through a loopback TCP socket, spliced into a file and fsynced by a bare thread
(no HTTP, no server) — what the kernel's own path costs, so the server's share is the ratio
upload ÷ floor. Copies and uploads alternate, and so do copies and downloads
(the client's download lands on the same disk against ``shutil.copyfile``, neither fsynced:
both land in the page cache, so the ratio is the transfer path's); ratios are medians over
``--runs`` pairs. Every timing starts after a ``sync`` (see :func:`remove`).
It also prints the server's CPU time per GB moved each way and the download rate into
``/dev/null`` (the server's path without the client's disk), the steadier figures on a shared
machine. Target (issue 5): flat memory, ratios ≥ 0.8. The source file is written once and
read from the page cache by the copies, uploads and downloads alike, so the comparison is
between the write paths.

Clients (``--client``):

- ``sendfile`` (the default where ``os.sendfile`` exists): a minimal HTTP/1.1 client on a raw
  socket. PUT sends the request head with the link's signed headers, then the body with
  ``socket.sendfile`` (page-cache pages handed to the socket, no user-space copy); GET reads
  the head and moves the body socket → pipe → file with ``splice`` (one kernel copy, as
  ``shutil.copyfile`` makes). It is the default because it measures the server: the client
  costs what the plain copy it is compared with costs, so on a machine where client and
  server share the CPUs the ratios are not bounded by the client's own copies (``curl``
  reads the file into user space and writes it to the socket, and on downloads reads the
  socket and writes the file: two copies per byte the plain copy does not make), and the
  upload can be set against the loopback floor, which moves bytes the same way. Measured
  (2026-11-28, 1 GB, five pairs): upload ÷ copy 0.82 to 0.86 pair to pair against curl's
  0.46 to 0.78, and 0.96 to 1.12 of the floor against curl's 0.55 to 0.75.
- ``curl`` (``curl -T`` / ``curl -o``): what a common client sees on the same machine; the
  earlier figures in ``docs/performance.md`` were taken with it (it was the default).
- ``httpx``: a streaming Python client, 1 MiB chunks (the agent's own library).

On loopback, TCP's receive work is likely charged partly to the sender's system calls and
partly to the receiver's, depending on who holds the socket when packets arrive: the server's
CPU per GB moves with the client used, so compare it between runs with the same client.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

PASSWORD = "bench-password-1"
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Sampler:
    """Peak VmRSS of a process, sampled every 10 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.01)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_source(path: Path, size: int) -> str:
    """A file of ``size`` bytes (a random MiB repeated with a counter); returns its sha256."""
    block = os.urandom(MIB)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        written = 0
        n = 0
        while written < size:
            chunk = (n.to_bytes(8, "big") + block[8:])[: size - written]
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            n += 1
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def remove(path: Path) -> None:
    """Delete, then ``sync``, so each timing starts on a quiet disk: with the ``discard`` mount
    option the freed blocks are trimmed at the next journal commit — which the next timed
    ``fsync`` would wait for — and pages an unfsynced copy left dirty are written back here,
    not during the next transfer."""
    path.unlink(missing_ok=True)
    os.sync()


def plain_copy(source: Path, target: Path, fsync: bool = True) -> float:
    started = time.perf_counter()
    shutil.copyfile(source, target)
    if fsync:
        with target.open("rb+") as handle:
            os.fsync(handle.fileno())
    return time.perf_counter() - started


def userspace_copy(source: Path, target: Path) -> float:
    """``dd bs=1M``-style: read and write through a 1 MiB buffer, then fsync."""
    started = time.perf_counter()
    buffer = bytearray(MIB)
    view = memoryview(buffer)
    with source.open("rb", buffering=0) as src, target.open("wb", buffering=0) as dst:
        while n := src.readinto(buffer):
            dst.write(view[:n])
        os.fsync(dst.fileno())
    return time.perf_counter() - started


def start_server(
    data_dir: Path, size_mb: int, zero_copy: bool = True
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    env.update(
        RUNYARD_LOGGER_LEVEL="warn",
        RUNYARD_LOGGER_FORMAT="json",
        RUNYARD_AUTH_ARGON2_TIME_COST="1",
        RUNYARD_AUTH_ARGON2_MEMORY_COST_KIB="64",
        RUNYARD_AUTH_ARGON2_PARALLELISM="1",
        RUNYARD_STORAGE_MAX_UPLOAD_MB=str(size_mb + 1),
        RUNYARD_SERVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        RUNYARD_STORAGE_LOCAL_ZERO_COPY=str(zero_copy).lower(),
    )
    log = (data_dir.parent / "server.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runyard.cli.main",
            "server",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not start; see server.log")
        time.sleep(0.1)


def session(url: str) -> dict[str, str]:
    api = f"{url}/api/v1"
    body = {"email_address": "bench@example.com", "user_password": PASSWORD}
    httpx.post(f"{api}/auth/register", json=body).raise_for_status()
    token = httpx.post(f"{api}/auth/login", json=body).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    team = httpx.get(f"{api}/users/me", headers=headers).json()["team_list"][0]["id"]
    return {**headers, "X-Team-ID": team}


def _connect(url: str, method: str, headers: dict[str, str]) -> socket.socket:
    """A blocking socket to the link's host with the request line and headers sent."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        "User-Agent: runyard-bench",
        "Accept: */*",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    sock = socket.create_connection((host, port))
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    return sock


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The answer's status code, headers (lower-case names) and the body bytes read past them."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before the answer's head: {buffer!r}")
        buffer += chunk
    head, rest = buffer.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return status, fields, rest


def _sendfile_put(url: str, headers: dict[str, str], source: Path) -> int:
    """PUT the file with ``sendfile(2)``: the kernel hands page-cache pages to the socket, no
    user-space copy (the client then costs about what ``shutil.copyfile`` costs)."""
    with _connect(url, "PUT", headers) as sock, source.open("rb") as handle:
        # The server may answer early and close (a 4xx): its answer says why.
        with contextlib.suppress(OSError):
            sock.sendfile(handle)
        status, _, _ = _read_head(sock)
        return status


def _splice_into(sock: socket.socket, fd: int, count: int) -> None:
    """Up to ``count`` bytes from the blocking socket into ``fd`` through a pipe (stops early at
    the end of the stream): the socket's pages are referenced, copied once into the file."""
    pipe_r, pipe_w = os.pipe()
    try:
        with contextlib.suppress(OSError):  # the default pipe size works, in more calls
            fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, MIB)
        while count > 0:
            moved = os.splice(sock.fileno(), pipe_w, min(count, MIB))
            if moved == 0:
                break
            count -= moved
            while moved > 0:
                moved -= os.splice(pipe_r, fd, moved)
    finally:
        os.close(pipe_r)
        os.close(pipe_w)


def loopback_floor(source: Path, target: Path) -> float:
    """The upload's kernel path without HTTP or the server: ``sendfile`` into a loopback TCP
    socket, a thread splicing it into ``target`` and fsyncing, then one byte back. A server's
    upload rides on this path plus HTTP: it can come close, not go faster (beyond noise)."""
    size = source.stat().st_size
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def receive() -> None:
            conn, _ = listener.accept()
            with conn, target.open("wb", buffering=0) as out:
                _splice_into(conn, out.fileno(), size)
                os.fsync(out.fileno())
                conn.sendall(b"k")

        thread = threading.Thread(target=receive)
        thread.start()
        started = time.perf_counter()
        with socket.create_connection(listener.getsockname()) as sock, source.open("rb") as handle:
            sock.sendfile(handle)
            sock.recv(1)
        elapsed = time.perf_counter() - started
        thread.join()
    return elapsed


def _sendfile_get(url: str, target: Path) -> int:
    """GET into ``target`` with ``splice(2)`` socket → pipe → file (one kernel copy into the
    page cache, like ``shutil.copyfile``); else ``recv_into`` a 1 MiB buffer and write."""
    with _connect(url, "GET", {}) as sock, target.open("wb", buffering=0) as out:
        status, fields, rest = _read_head(sock)
        out.write(rest)
        length = fields.get("content-length")
        remaining = int(length) - len(rest) if length is not None else sys.maxsize
        if hasattr(os, "splice"):
            _splice_into(sock, out.fileno(), remaining)
        else:
            buffer = bytearray(MIB)
            view = memoryview(buffer)
            while remaining > 0 and (n := sock.recv_into(buffer, min(remaining, MIB))):
                out.write(view[:n])
                remaining -= n
        return status


def put_file(client: str, url: str, headers: dict[str, str], source: Path) -> int:
    if client == "sendfile":
        return _sendfile_put(url, headers, source)
    if client == "curl":
        args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", str(source)]
        for name, value in headers.items():
            args += ["-H", f"{name}: {value}"]
        args += ["-H", "Expect:", url]
        return int(subprocess.run(args, check=True, capture_output=True, text=True).stdout)

    def chunks() -> Any:
        with source.open("rb") as handle:
            while chunk := handle.read(MIB):
                yield chunk

    response = httpx.put(url, content=chunks(), headers=headers, timeout=600)
    return response.status_code


def get_file(client: str, url: str, target: Path) -> int:
    if client == "sendfile":
        return _sendfile_get(url, target)
    if client == "curl":
        args = ["curl", "-sS", "-o", str(target), "-w", "%{http_code}", url]
        return int(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
    with httpx.stream("GET", url, timeout=600) as response, target.open("wb") as out:
        for chunk in response.iter_bytes(MIB):
            out.write(chunk)
        return response.status_code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (one disk)")
    parser.add_argument(
        "--client",
        choices=["sendfile", "curl", "httpx"],
        default="sendfile" if hasattr(os, "sendfile") else "curl",
    )
    parser.add_argument("--runs", type=int, default=5, help="copy/upload pairs to time")
    parser.add_argument(
        "--no-zero-copy",
        action="store_true",
        help="move every byte through Python (RUNYARD_STORAGE_LOCAL_ZERO_COPY=false)",
    )
    args = parser.parse_args()
    if args.client == "curl" and shutil.which("curl") is None:
        args.client = "httpx"
    work = Path(tempfile.mkdtemp(prefix="runyard-bench-storage-", dir=args.dir))
    size = args.size_mb * MIB
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "size_mb": args.size_mb,
        "client": args.client,
        "zero_copy": not args.no_zero_copy,
        "folder": str(work),
    }
    proc = None
    try:
        source = work / "source.bin"
        print(f"writing a {args.size_mb} MB source file in {work} …", flush=True)
        digest = make_source(source, size)
        data_dir = work / "data"
        proc, url = start_server(data_dir, args.size_mb, zero_copy=not args.no_zero_copy)
        headers = session(url)
        idle = rss_kib(proc.pid)
        results["server_rss_idle_mib"] = round(idle / 1024, 1)
        # Copy and upload alternate, so each pair sees the disk in the same mood; the
        # figure is the median of the per-pair ratios.
        pairs: list[tuple[float, float]] = []
        user_pairs: list[tuple[float, float]] = []
        floor_triples: list[tuple[float, float, float]] = []
        upload_cpu: list[float] = []
        peak = 0
        key = ""
        for n in range(args.runs):
            copy_seconds = plain_copy(source, work / "copy.bin")
            remove(work / "copy.bin")
            user_seconds = userspace_copy(source, work / "copy.bin")
            remove(work / "copy.bin")
            floor_seconds = 0.0
            if hasattr(os, "splice"):
                floor_seconds = loopback_floor(source, work / "copy.bin")
                remove(work / "copy.bin")
            presign = httpx.post(
                f"{url}/api/v1/r/files/presign",
                headers=headers,
                json={
                    "file_name": f"big-{n}.bin",
                    "file_size": size,
                    "content_type": "application/octet-stream",
                },
            )
            presign.raise_for_status()
            body = presign.json()
            with Sampler(proc.pid) as sampler:
                cpu = cpu_seconds(proc.pid)
                started = time.perf_counter()
                status = put_file(args.client, body["upload_url"], body["upload_headers"], source)
                upload_seconds = time.perf_counter() - started
                upload_cpu.append((cpu_seconds(proc.pid) - cpu) * 1024 / args.size_mb)
            if status != 200:
                raise RuntimeError(f"upload answered HTTP {status}; see server.log")
            pairs.append((copy_seconds, upload_seconds))
            user_pairs.append((user_seconds, upload_seconds))
            floor_triples.append((copy_seconds, floor_seconds, upload_seconds))
            peak = max(peak, sampler.peak)
            key = body["file_key"]
            if n + 1 < args.runs:
                remove(data_dir / "objects" / key)
        ratios = sorted(c / u for c, u in pairs)
        stored = data_dir / "objects" / key
        results["pairs_copy_upload_s"] = [[round(c, 2), round(u, 2)] for c, u in pairs]
        results["plain_copy_mb_s_median"] = round(
            args.size_mb / statistics.median(c for c, _ in pairs)
        )
        results["upload_mb_s_median"] = round(args.size_mb / statistics.median(u for _, u in pairs))
        results["upload_vs_copy_median"] = round(statistics.median(ratios), 2)
        results["upload_vs_copy_range"] = [round(ratios[0], 2), round(ratios[-1], 2)]
        user_ratios = sorted(c / u for c, u in user_pairs)
        results["userspace_copy_mb_s_median"] = round(
            args.size_mb / statistics.median(c for c, _ in user_pairs)
        )
        results["upload_vs_userspace_copy_median"] = round(statistics.median(user_ratios), 2)
        results["upload_vs_userspace_copy_range"] = [
            round(user_ratios[0], 2),
            round(user_ratios[-1], 2),
        ]
        if hasattr(os, "splice"):
            results["loopback_floor_mb_s_median"] = round(
                args.size_mb / statistics.median(f for _, f, _ in floor_triples)
            )
            floor_ratios = sorted(c / f for c, f, _ in floor_triples)
            results["loopback_floor_vs_copy_median"] = round(statistics.median(floor_ratios), 2)
            results["loopback_floor_vs_copy_range"] = [
                round(floor_ratios[0], 2),
                round(floor_ratios[-1], 2),
            ]
            server_ratios = sorted(f / u for _, f, u in floor_triples)
            results["upload_vs_loopback_floor_median"] = round(statistics.median(server_ratios), 2)
            results["upload_vs_loopback_floor_range"] = [
                round(server_ratios[0], 2),
                round(server_ratios[-1], 2),
            ]
        results["server_cpu_s_per_gb_upload_median"] = round(statistics.median(upload_cpu), 2)
        results["server_rss_peak_upload_mib"] = round(peak / 1024, 1)
        results["stored_intact"] = stored.stat().st_size == size and sha256_of(stored) == digest

        # Download it back through a signed GET link (the API hands one out for outputs; an
        # input's link is minted here the same way the dispatch does).
        link = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, asyncio;"
                "from datetime import UTC, datetime;"
                "from pathlib import Path;"
                "from runyard.objects.local import LocalObjectStore;"
                "from runyard.context import SECRET_SETTING;"
                "import sqlite3;"
                "secret = sqlite3.connect(sys.argv[1]).execute("
                "'select value from instance_settings where key=?', (SECRET_SETTING,)"
                ").fetchone()[0];"
                "store = LocalObjectStore(Path(sys.argv[2]), secret, lambda: sys.argv[3],"
                " lambda: datetime.now(UTC));"
                "print(asyncio.run(store.presign_get(sys.argv[4], ttl=3600)).url)",
                str(data_dir / "runyard.db"),
                str(data_dir / "objects"),
                url,
                key,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        # Copy and download alternate too. Neither fsyncs: the client writes into the page
        # cache like the copy does, so the figure compares the transfer paths, not the disk
        # (with an fsync both wait on the disk and the ratio says nothing about the server).
        target = work / "downloaded.bin"
        down_pairs: list[tuple[float, float]] = []
        cpu_per_gb: list[float] = []
        null_seconds: list[float] = []
        peak = 0
        for _ in range(args.runs):
            remove(target)
            copy_seconds = plain_copy(source, work / "copy.bin", fsync=False)
            remove(work / "copy.bin")
            with Sampler(proc.pid) as sampler:
                cpu = cpu_seconds(proc.pid)
                started = time.perf_counter()
                status = get_file(args.client, link, target)
                download_seconds = time.perf_counter() - started
                cpu_per_gb.append((cpu_seconds(proc.pid) - cpu) * 1024 / args.size_mb)
            if status != 200:
                raise RuntimeError(f"download answered HTTP {status}")
            down_pairs.append((copy_seconds, download_seconds))
            peak = max(peak, sampler.peak)
            # The same download thrown away by the client: the server's path without the disk.
            os.sync()
            started = time.perf_counter()
            get_file(args.client, link, Path(os.devnull))
            null_seconds.append(time.perf_counter() - started)
        down_ratios = sorted(c / d for c, d in down_pairs)
        results["pairs_copy_download_s"] = [[round(c, 2), round(d, 2)] for c, d in down_pairs]
        results["download_mb_s_median"] = round(
            args.size_mb / statistics.median(d for _, d in down_pairs)
        )
        results["download_vs_copy_median"] = round(statistics.median(down_ratios), 2)
        results["download_vs_copy_range"] = [round(down_ratios[0], 2), round(down_ratios[-1], 2)]
        results["download_to_devnull_mb_s_median"] = round(
            args.size_mb / statistics.median(null_seconds)
        )
        results["server_cpu_s_per_gb_download_median"] = round(statistics.median(cpu_per_gb), 2)
        results["server_rss_peak_download_mib"] = round(peak / 1024, 1)
        results["downloaded_intact"] = target.stat().st_size == size and sha256_of(target) == digest
        results["server_vmhwm_mib"] = round(rss_kib(proc.pid, "VmHWM") / 1024, 1)
    finally:
        if proc is not None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

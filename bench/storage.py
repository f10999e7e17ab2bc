"""Storage benchmark: a large upload and download through the local backend's signed links.

    .venv/bin/python bench/storage.py [--size-mb 2048] [--dir DIR] [--client curl|httpx]
                                      [--runs N] [--no-zero-copy]

Runs a real ``runyard server`` process (SQLite, local storage in ``DIR``), presigns one input
of ``--size-mb`` through the API, PUTs it to the signed link, then GETs it back through a
signed link (uploads are spliced into the file, downloads go out with ``sendfile(2)``,
unless ``--no-zero-copy``). Prints, for each direction,
the server's peak resident memory (sampled from ``/proc/<pid>/status`` every 10 ms, and the
kernel's high-water mark ``VmHWM``) and the throughput as a ratio of a plain copy of the same
file on the same disk (``shutil.copyfile`` plus ``fsync``, as the server fsyncs an upload
before answering; on Linux that copy runs in the kernel with ``sendfile``), and for uploads
of a user-space copy through a 1 MiB buffer (``dd bs=1M`` plus ``fsync``: the same two copies
per byte an upload costs). Copies and uploads alternate, and so do copies and downloads
(``curl -o`` to the same disk against ``shutil.copyfile``, neither fsynced: both land in the
page cache, so the ratio is the transfer path's); ratios are medians over ``--runs`` pairs.
It also prints the server's CPU time per GB moved each way and the download rate into
``/dev/null`` (the server's path without the client's disk), the steadier figures on a shared
machine. Target (issue 5): flat memory, ratios ≥ 0.8. The source file is written once and
read from the page cache by the copies, uploads and downloads alike, so the comparison is
between the write paths.
"""

from __future__ import annotations

import argparse
import contextlib
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


def put_file(client: str, url: str, headers: dict[str, str], source: Path) -> int:
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
    parser.add_argument("--client", choices=["curl", "httpx"], default="curl")
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
        upload_cpu: list[float] = []
        peak = 0
        key = ""
        for n in range(args.runs):
            copy_seconds = plain_copy(source, work / "copy.bin")
            (work / "copy.bin").unlink()
            user_seconds = userspace_copy(source, work / "copy.bin")
            (work / "copy.bin").unlink()
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
            peak = max(peak, sampler.peak)
            key = body["file_key"]
            if n + 1 < args.runs:
                (data_dir / "objects" / key).unlink()
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
                "from runyard.services.context import SECRET_SETTING;"
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
            copy_seconds = plain_copy(source, work / "copy.bin", fsync=False)
            (work / "copy.bin").unlink()
            target.unlink(missing_ok=True)
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

"""The agent as users run it: real processes on loopback, on SQLite and PostgreSQL.

A ``runyard server``, ``runyard dev fake-comfyui`` processes (one per "GPU machine") and
``runyard agent --config …`` processes (each reading a YAML config file). The test is the user:
it submits through the SDK, downloads outputs, kills processes with SIGKILL and SIGTERM.

One server per database backend (module scope); each test gets its own label, workflow, fake
ComfyUIs and agents, so tests never take each other's work.
"""

from __future__ import annotations

import copy
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from runyard.client import Runyard, TaskEvent, TaskStatus
from runyard.dev.fake_comfyui import make_png, png_size
from tests.conftest import BACKENDS, database_url
from tests.e2e.conftest import RUNYARD, free_port, runyard_env
from tests.e2e.stack import EMAIL, PASSWORD, start_server, stop
from tests.fixtures.graphs import TEXT_TO_IMAGE_PARAMETERS, text_to_image

FAST = {
    "RUNYARD_SCHEDULER_HEARTBEAT_INTERVAL_SECONDS": "0.2",
    "RUNYARD_SCHEDULER_LEASE_TTL_SECONDS": "2",
    "RUNYARD_SCHEDULER_ACK_TIMEOUT_SECONDS": "3",
    "RUNYARD_SCHEDULER_REAPER_INTERVAL_SECONDS": "0.2",
    "RUNYARD_SCHEDULER_SWEEP_INTERVAL_SECONDS": "0.5",
    "RUNYARD_SCHEDULER_PROGRESS_INTERVAL_SECONDS": "0.05",
    "RUNYARD_SCHEDULER_RETRY_BACKOFF_BASE_SECONDS": "0.1",
    "RUNYARD_SCHEDULER_RETRY_BACKOFF_CAP_SECONDS": "0.5",
}
WAIT = 30.0


def until(
    condition: Callable[[], Any], what: str, logs: Callable[[], str], seconds: float = WAIT
) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{logs()[-6000:]}")
        time.sleep(0.05)


@dataclass
class Comfy:
    """One ``runyard dev fake-comfyui`` process; ``kill``/``start`` play a crash and restart."""

    port: int
    root: Path
    log: Path
    step_delay: float
    fail_nodes: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    #: Where every process it starts is registered for stopping (a restart starts another).
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *RUNYARD,
                    "dev",
                    "fake-comfyui",
                    "--port",
                    str(self.port),
                    "--step-delay",
                    str(self.step_delay),
                    "--root",
                    str(self.root),
                    *(arg for spec in self.fail_nodes for arg in ("--fail-node", spec)),
                ],
                env=runyard_env("sqlite://"),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started.append(self.proc)

    def wait_up(self) -> None:
        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                return httpx.get(f"{self.url}/system_stats", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        until(answers, "the fake ComfyUI", lambda: self.log.read_text())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def queue(self) -> tuple[list[str], list[str]]:
        """Prompt ids running and pending in ComfyUI's queue."""
        body = httpx.get(f"{self.url}/queue", timeout=5).json()
        return (
            [item[1] for item in body["queue_running"]],
            [item[1] for item in body["queue_pending"]],
        )

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        body = httpx.get(f"{self.url}/history/{prompt_id}", timeout=5).json()
        entry: dict[str, Any] | None = body.get(prompt_id)
        return entry


@dataclass
class Farm:
    url: str
    sk: str
    agent_key: str
    workdir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self) -> Runyard:
        return Runyard(self.url, api_key=self.sk)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.workdir.glob("*.log"))
        )

    def comfy(self, name: str, step_delay: float = 0.02, *fail_nodes: str) -> Comfy:
        """A fake ComfyUI; ``fail_nodes`` are its ``--fail-node NODE[:MESSAGE]`` values."""
        comfy = Comfy(
            free_port(),
            self.workdir / name,
            self.workdir / f"{name}.log",
            step_delay,
            fail_nodes,
            started=self.procs,
        )
        comfy.start()
        return comfy

    def agent(
        self, agent_id: str, label: str, comfy: Comfy, *, grace: float = 30.0, capacity: int = 1
    ) -> subprocess.Popen[bytes]:
        """``runyard agent --config <file>``: everything but the grace period in the file."""
        config = self.workdir / f"{agent_id}.yaml"
        config.write_text(
            f"gateway: {self.url}\n"
            f"key: {self.agent_key}\n"
            f"agent_id: {agent_id}\n"
            f"labels: [{label}]\n"
            f"capacity: {capacity}\n"
            f"comfyui_url: {comfy.url}\n"
            f"work_dir: {self.workdir}\n"
            "health_interval_seconds: 0.3\n"
        )
        config.chmod(0o600)
        with (self.workdir / f"{agent_id}.log").open("ab") as out:
            proc = subprocess.Popen(
                [*RUNYARD, "agent", "--config", str(config), "--grace", str(grace)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def agent_status(self, agent_id: str) -> str | None:
        with self.client() as client:
            for agent in client.list_agents():
                if agent.agent_id == agent_id:
                    return agent.agent_status
        return None

    def wait_agent(self, agent_id: str, *statuses: str) -> None:
        until(
            lambda: self.agent_status(agent_id) in statuses,
            f"agent {agent_id} to be {'/'.join(statuses)}",
            self.logs,
        )

    def workflow(self, slug: str, label: str, *, img2img: bool = False) -> None:
        graph = text_to_image()
        graph["5"]["inputs"].update(width=48, height=32)
        params = copy.deepcopy(TEXT_TO_IMAGE_PARAMETERS)
        if img2img:
            graph["11"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
            graph["12"] = {
                "class_type": "VAEEncode",
                "inputs": {"pixels": ["11", 0], "vae": ["4", 2]},
            }
            graph["3"]["inputs"]["latent_image"] = ["12", 0]
            params.append({"key": "init_image", "type": "file", "node_id": "11", "field": "image"})
        with Runyard(self.url, email=EMAIL, password=PASSWORD) as owner:
            owner.import_workflow(
                graph, slug=slug, parameters=params, labels=["comfyui", label], max_retries=2
            )

    def task(self, task_id: str) -> Any:
        with self.client() as client:
            return client.get_task(task_id)

    def wait_task(self, task_id: str, *statuses: str, seconds: float = WAIT) -> Any:
        return until(
            lambda: (task := self.task(task_id)).task_status in statuses and task,
            f"task {task_id} to be {'/'.join(statuses)}",
            self.logs,
            seconds,
        )

    def wait_step(self, task_id: str, step: int = 1) -> None:
        """Follow the task's events until its sampler reports ``step``."""
        with self.client() as client:
            for event in client.events(task_id, timeout=WAIT):
                if event.event == "progress" and (event.data.get("step_current") or 0) >= step:
                    return
        pytest.fail(f"task {task_id} ended before step {step}\n{self.logs()[-6000:]}")


@pytest.fixture(scope="module", params=BACKENDS)
def farm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Farm]:
    workdir = tmp_path_factory.mktemp(f"agent-{request.param}")
    env = runyard_env(database_url(request, request.param, workdir), **FAST)
    url, server = start_server(env, workdir)
    farm = Farm(url, "", "", workdir, env, [server])
    try:
        with Runyard(url, email=EMAIL, password=PASSWORD) as owner:
            owner.login()
            farm.sk = owner.create_key("e2e").raw_key
            farm.agent_key = owner.create_key("e2e agents", kind="agent").raw_key
        yield farm
    finally:
        for proc in reversed(farm.procs):
            stop(proc)


@pytest.fixture
def label(farm: Farm) -> Iterator[str]:
    """A label of this test only; its processes are stopped when it ends."""
    started = len(farm.procs)
    yield f"t{uuid.uuid4().hex[:8]}"
    for proc in reversed(farm.procs[started:]):
        stop(proc)
    del farm.procs[started:]


@dataclass
class Machine:
    """One GPU machine of the farm: a fake ComfyUI and an agent (capacity 2), shared by a
    module's tests."""

    label: str
    agent_id: str
    comfy: Comfy


@pytest.fixture(scope="module")
def machine(farm: Farm) -> Machine:
    label = f"m{uuid.uuid4().hex[:8]}"
    comfy = farm.comfy(f"{label}-comfy", step_delay=0.05)
    comfy.wait_up()
    farm.agent(f"{label}-agent", label, comfy, capacity=2)
    farm.workflow(f"{label}-t2i", label)
    farm.workflow(f"{label}-i2i", label, img2img=True)
    farm.wait_agent(f"{label}-agent", "idle")
    return Machine(label, f"{label}-agent", comfy)


def test_text_to_image_runs_to_a_downloadable_output(
    farm: Farm, machine: Machine, tmp_path: Path
) -> None:
    label, comfy = machine.label, machine.comfy

    events: list[TaskEvent] = []
    with farm.client() as client:
        task = client.run(
            f"{label}-t2i",
            {"prompt": "a red fox", "steps": 20, "seed": 7},
            wait=True,
            timeout=WAIT,
            on_event=events.append,
        )
        assert task.task_status is TaskStatus.COMPLETED, (task.task_error, farm.logs())
        assert task.agent_id == f"{label}-agent"
        (path,) = client.download_outputs(task.id, tmp_path / "out")
        result = client.get_result(task.id)
    produced = comfy.root / "output" / path.name
    assert path.read_bytes() == produced.read_bytes()
    assert png_size(path.read_bytes()) == (48, 32)
    assert result.task_output is not None and result.task_output["outputs"][0]["node_id"] == "9"
    # Events arrive in order; the sampler's steps (at most 4 a second) and progress only rise.
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    steps = [e.data["step_current"] for e in events if e.data.get("step_current")]
    assert steps == sorted(steps) and len(set(steps)) >= 2, steps
    assert all(e.data.get("step_total") == 20 for e in events if e.data.get("step_current"))
    progress = [
        e.data["progress"] for e in events if e.event == "progress" and e.data.get("progress")
    ]
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_img2img_carries_an_uploaded_input_through(
    farm: Farm, machine: Machine, tmp_path: Path
) -> None:
    label, comfy = machine.label, machine.comfy
    picture = make_png(40, 24, b"my holiday photo")
    headers = {"Authorization": f"Bearer {farm.sk}"}
    presigned = httpx.post(
        f"{farm.url}/api/v1/r/files/presign",
        headers=headers,
        json={"file_name": "holiday.png", "file_size": len(picture), "content_type": "image/png"},
    )
    assert presigned.status_code == 200, presigned.text
    link = presigned.json()
    put = httpx.put(link["upload_url"], content=picture, headers=link["upload_headers"])
    assert put.status_code == 200, put.text

    with farm.client() as client:
        task = client.run(
            f"{label}-i2i",
            {"prompt": "the same, at night", "steps": 3, "init_image": link["file_key"]},
            wait=True,
            timeout=WAIT,
        )
        assert task.task_status is TaskStatus.COMPLETED, (task.task_error, farm.logs())
        (path,) = client.download_outputs(task.id, tmp_path / "out")
    # The input reached ComfyUI byte for byte, and the output follows its size.
    assert (comfy.root / "input" / "holiday.png").read_bytes() == picture
    assert png_size(path.read_bytes()) == (40, 24)
    assert path.read_bytes() == (comfy.root / "output" / path.name).read_bytes()


def test_cancel_interrupts_the_running_prompt_and_spares_the_queued_one(
    farm: Farm, machine: Machine, tmp_path: Path
) -> None:
    from runyard.agent.comfyui import attempt_prompt_id

    label, comfy = machine.label, machine.comfy  # its agent has capacity 2
    with farm.client() as client:
        running_id = client.submit(f"{label}-t2i", {"prompt": "a long fox", "steps": 150})
        farm.wait_step(running_id)
        queued_id = client.submit(f"{label}-t2i", {"prompt": "a short fox", "steps": 3})
    running_prompt, queued_prompt = (
        attempt_prompt_id(running_id, 1),
        attempt_prompt_id(queued_id, 1),
    )
    # Both are in ComfyUI's queue at once: one running, the other waiting behind it.
    until(
        lambda: comfy.queue() == ([running_prompt], [queued_prompt]),
        "both prompts in ComfyUI's queue",
        farm.logs,
    )

    with farm.client() as client:
        client.cancel_task(running_id)
    task = farm.wait_task(running_id, "cancelled", "completed", "failed")
    assert task.task_status == "cancelled", (task.task_error, farm.logs())
    entry = until(lambda: comfy.history(running_prompt), "the interrupted prompt", farm.logs)
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert entry["status"]["completed"] is False

    other = farm.wait_task(queued_id, "completed", "failed", "cancelled")
    assert other.task_status == "completed", (other.task_error, farm.logs())
    assert other.retry_count == 0 and other.agent_id == f"{label}-agent"
    with farm.client() as client:
        (path,) = client.download_outputs(queued_id, tmp_path / "out")
        assert client.get_result(queued_id).task_output["prompt_id"] == queued_prompt
    assert path.read_bytes() == (comfy.root / "output" / path.name).read_bytes()
    assert farm.task(running_id).task_status == "cancelled"  # stays cancelled


def test_a_node_error_fails_the_task_with_that_node_and_message(farm: Farm, label: str) -> None:
    comfy = farm.comfy(f"{label}-comfy", 0.02, "VAEDecode:tensor shapes do not match")
    comfy.wait_up()
    farm.agent(f"{label}-agent", label, comfy)
    farm.wait_agent(f"{label}-agent", "idle")
    farm.workflow(f"{label}-t2i", label)  # max_retries=2, yet a node error is not retried
    with farm.client() as client:
        task = client.run(f"{label}-t2i", {"prompt": "a fox", "steps": 2}, wait=True, timeout=WAIT)
    assert task.task_status is TaskStatus.FAILED, farm.logs()
    assert task.retry_count == 0
    assert task.task_error is not None
    assert "node 8 (VAEDecode)" in task.task_error, task.task_error
    assert "tensor shapes do not match" in task.task_error, task.task_error
    farm.wait_agent(f"{label}-agent", "idle")  # the agent takes work again


def test_agent_killed_mid_task_is_retried_on_another_agent(farm: Farm, label: str) -> None:
    comfy_a, comfy_b = farm.comfy(f"{label}-comfy-a", 0.05), farm.comfy(f"{label}-comfy-b")
    comfy_a.wait_up()
    comfy_b.wait_up()
    agent_a = farm.agent(f"{label}-a", label, comfy_a)
    farm.wait_agent(f"{label}-a", "idle")
    farm.workflow(f"{label}-t2i", label)
    with farm.client() as client:
        task_id = client.submit(f"{label}-t2i", {"prompt": "a fox", "steps": 40})
    farm.wait_step(task_id)
    farm.agent(f"{label}-b", label, comfy_b)
    agent_a.send_signal(signal.SIGKILL)
    agent_a.wait(timeout=10)

    task = farm.wait_task(task_id, "completed", "failed")
    assert task.task_status == "completed", (task.task_error, farm.logs())
    assert task.agent_id == f"{label}-b"
    assert task.retry_count == 1
    with farm.client() as client:
        assert len(client.get_result(task_id).task_output["outputs"]) == 1


def test_comfyui_down_makes_the_agent_unhealthy_until_it_is_back(farm: Farm, label: str) -> None:
    comfy = farm.comfy(f"{label}-comfy")
    comfy.wait_up()
    farm.agent(f"{label}-agent", label, comfy)
    farm.wait_agent(f"{label}-agent", "idle")
    farm.workflow(f"{label}-t2i", label)

    comfy.kill()
    farm.wait_agent(f"{label}-agent", "unhealthy")
    with farm.client() as client:
        task_id = client.submit(f"{label}-t2i", {"prompt": "a fox", "steps": 2})
    # Several health probes later the task still waits: the agent takes no work.
    farm.wait_task(task_id, "pending", "waiting")
    time.sleep(1.0)
    assert farm.task(task_id).task_status in ("pending", "waiting")
    assert farm.agent_status(f"{label}-agent") == "unhealthy"

    comfy.start()
    comfy.wait_up()
    task = farm.wait_task(task_id, "completed", "failed")
    assert task.task_status == "completed", (task.task_error, farm.logs())
    assert task.retry_count == 0 and task.agent_id == f"{label}-agent"
    farm.wait_agent(f"{label}-agent", "idle")


def test_sigterm_lets_running_work_finish_within_the_grace_period(farm: Farm, label: str) -> None:
    comfy = farm.comfy(f"{label}-comfy", 0.05)
    comfy.wait_up()
    agent = farm.agent(f"{label}-agent", label, comfy, grace=30)
    farm.wait_agent(f"{label}-agent", "idle")
    farm.workflow(f"{label}-t2i", label)
    with farm.client() as client:
        task_id = client.submit(f"{label}-t2i", {"prompt": "a fox", "steps": 20})
    farm.wait_step(task_id)
    agent.send_signal(signal.SIGTERM)

    assert agent.wait(timeout=WAIT) == 0
    task = farm.task(task_id)
    assert task.task_status == "completed", (task.task_error, farm.logs())
    assert task.retry_count == 0 and task.agent_id == f"{label}-agent"
    assert farm.agent_status(f"{label}-agent") is None  # GET /agents lists connected agents


def test_sigterm_past_the_grace_period_hands_the_work_back(farm: Farm, label: str) -> None:
    comfy_a, comfy_b = farm.comfy(f"{label}-comfy-a", 0.05), farm.comfy(f"{label}-comfy-b")
    comfy_a.wait_up()
    comfy_b.wait_up()
    agent_a = farm.agent(f"{label}-a", label, comfy_a, grace=0.3)
    farm.wait_agent(f"{label}-a", "idle")
    farm.workflow(f"{label}-t2i", label)
    with farm.client() as client:
        task_id = client.submit(f"{label}-t2i", {"prompt": "a fox", "steps": 60})
    farm.wait_step(task_id)
    agent_a.send_signal(signal.SIGTERM)
    assert agent_a.wait(timeout=WAIT) == 0
    # ComfyUI was told to stop that prompt: it is not left running for nobody.
    from runyard.agent.comfyui import attempt_prompt_id

    entry = until(lambda: comfy_a.history(attempt_prompt_id(task_id, 1)), "interrupt", farm.logs)
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert farm.task(task_id).task_status in ("pending", "waiting", "queued")

    farm.agent(f"{label}-b", label, comfy_b)
    task = farm.wait_task(task_id, "completed", "failed")
    assert task.task_status == "completed", (task.task_error, farm.logs())
    assert task.agent_id == f"{label}-b"

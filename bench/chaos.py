"""The long version of tests/e2e/test_chaos.py: more tasks, more agents, more rounds of kills.

```
.venv/bin/python bench/chaos.py --db sqlite [--tasks 3000] [--rounds 6] [--agents 6]
.venv/bin/python bench/chaos.py --db postgresql [--pg-url postgresql://postgres@127.0.0.1:5432/postgres]
```

Each round, once the farm has completed another share of the tasks: ``kill -9`` an agent and
start it again under the same id, ``SIGTERM`` another and start a new one, and every other
round ``kill -9`` the server and start it again on the same database. Tasks are submitted 100
per request, half before the first round and the rest spread over the rounds. At the end it
prints how many tasks were lost, did not complete (with their errors), or completed more than
once, and how the attempts ended; the exit status is 1 when any task was lost, stuck or
completed twice.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import DEFAULT_PG_URL, say  # noqa: E402
from tests.conftest import _pg_execute, _with_database  # noqa: E402
from tests.e2e.test_chaos import (  # noqa: E402
    TERMINAL,
    Farm,
    _count,
    _history,
    _setup,
    _submit,
)

from runyard.store import migrate  # noqa: E402
from runyard.store.db import Database  # noqa: E402


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await migrate.upgrade(db)
    finally:
        await db.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--agents", type=int, default=6)
    parser.add_argument("--stuck-seconds", type=float, default=300)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="runyard-chaos-"))
    pg_name = ""
    if args.db == "sqlite":
        url = f"sqlite:///{tmp / 'runyard.db'}"
    else:
        pg_name = f"runyard_chaos_{uuid.uuid4().hex[:10]}"
        asyncio.run(_pg_execute(args.pg_url, f'CREATE DATABASE "{pg_name}"'))
        url = _with_database(args.pg_url, pg_name)
    asyncio.run(_migrate(url))
    farm = Farm(tmp, url)
    say(f"{args.db}: {args.tasks} tasks, {args.agents} agents, {args.rounds} rounds; logs in {tmp}")
    started = time.monotonic()
    try:
        farm.start_server()
        sk = _setup(farm)
        names = [f"chaos-{i}" for i in range(args.agents)]
        for name in names:
            farm.start_agent(name)
        first = args.tasks // 2
        accepted = _submit(farm, sk, first, 0)
        rest = args.tasks - first
        per_round = -(-rest // args.rounds) if args.rounds else 0
        fresh = args.agents
        for round_ in range(args.rounds):
            goal = len(accepted) * (round_ + 1) // (args.rounds + 1)
            while _count(farm, sk, "completed") < goal:
                time.sleep(0.2)
            victim = names[round_ % len(names)]
            farm.kill_agent(victim, signal.SIGKILL).wait(timeout=10)
            farm.start_agent(victim)
            stopping = names[(round_ + 1) % len(names)]
            stopped = farm.kill_agent(stopping, signal.SIGTERM)
            names[(round_ + 1) % len(names)] = f"chaos-{fresh}"
            farm.start_agent(f"chaos-{fresh}")
            fresh += 1
            if round_ % 2 == 1:
                farm.kill_server()
                farm.start_server()
            say(
                f"round {round_ + 1}: killed {victim}, stopped {stopping} (exit {stopped.wait(60)})"
            )
            count = min(per_round, args.tasks - len(accepted))
            if count > 0:
                accepted += _submit(farm, sk, count, len(accepted))
        deadline = time.monotonic() + args.stuck_seconds
        while sum(_count(farm, sk, s) for s in TERMINAL) < len(accepted):
            if time.monotonic() > deadline:
                say(f"not every task terminal after {args.stuck_seconds} s")
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        tasks, events, attempts, outcomes = _history(url)
    finally:
        farm.stop_all()
        if pg_name:
            asyncio.run(
                _pg_execute(args.pg_url, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
            )
    lost = [t for t in accepted if t not in tasks]
    unfinished = {
        t: (tasks[t].task_status, tasks[t].task_error)
        for t in accepted
        if t in tasks and tasks[t].task_status != "completed"
    }
    twice = [t for t in accepted if events[t] > 1 or attempts[t] > 1]
    print(
        f"{len(accepted)} tasks accepted in {elapsed:.1f} s; attempts by outcome: {dict(outcomes)}"
    )
    print(f"lost: {len(lost)}; not completed: {len(unfinished)}; completed twice: {len(twice)}")
    for task_id, why in list(unfinished.items())[:20]:
        print(f"  {task_id}: {why}")
    return 1 if lost or unfinished or twice else 0


if __name__ == "__main__":
    sys.exit(main())

"""``runyard dev …``: tools for development and for trying Runyard without a GPU."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    no_args_is_help=True,
    help="Development tools: a fake ComfyUI to try Runyard without a GPU.",
)


@app.command("fake-comfyui")
def fake_comfyui(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8188,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    step_delay: Annotated[
        float, typer.Option("--step-delay", min=0, help="Seconds per sampler step.")
    ] = 0.1,
    root: Annotated[
        Path | None,
        typer.Option(
            help="Folder for input/, output/ and temp/ (kept).",
            show_default="a temporary folder, removed on exit",
        ),
    ] = None,
    fail_node: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-node",
            metavar="NODE[:MESSAGE]",
            help="Make this node (an id such as 3, or a class_type such as KSampler) fail "
            "every time it runs, with MESSAGE as its exception message. Repeatable.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a fake ComfyUI (its HTTP and WebSocket protocol, synthetic PNGs, no model) until
    Ctrl-C or SIGTERM. See docs/fake-comfyui.md."""
    try:
        from runyard.dev.fake_comfyui import serve
    except ImportError as exc:  # aiohttp missing from a trimmed install
        typer.echo(f"error: the fake ComfyUI needs aiohttp ({exc})", err=True)
        raise typer.Exit(1) from None

    failures: list[tuple[str, str | None]] = []
    for spec in fail_node or []:
        node, _, message = spec.partition(":")
        if not node.strip():
            typer.echo(f"error: --fail-node {spec!r}: name a node id or class_type", err=True)
            raise typer.Exit(2)
        failures.append((node.strip(), message.strip() or None))

    def announce(line: str) -> None:
        typer.echo(line)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                serve(
                    host=host,
                    port=port,
                    step_delay=step_delay,
                    root=root,
                    fail_nodes=failures,
                    announce=announce,
                )
            )
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None

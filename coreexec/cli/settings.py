"""``coreexec settings``: what this process resolved, and whether each part answers."""

from __future__ import annotations

import json

import click

from coreexec.doctor import check_all
from coreexec.settings import Settings


@click.command("settings")
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Reach each part (open the storage, write a probe output, PING Redis).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def settings_command(check: bool, as_json: bool) -> None:
    """Print the home, run storage, outputs, broker, result backend and Redis this
    process resolves from COREEXEC_* variables (passwords shown as ***), and check that
    each is reachable. Exits 1 naming the parts that are not.

    Run it where a worker, container or coordinator runs, with their environment: every
    process of a fleet must resolve the same storage, outputs and Redis.
    """
    settings = Settings.from_env()
    resolved = settings.resolved()
    results = {result.part: result for result in check_all(settings)} if check else {}
    if as_json:
        rows = {
            part: {"url": url, "from": source}
            | ({"ok": results[part].ok, "detail": results[part].detail} if part in results else {})
            for part, (url, source) in resolved.items()
        }
        click.echo(json.dumps(rows, indent=2))
    else:
        for part, (url, source) in resolved.items():
            line = f"{part:<15} {url}  ({source})"
            if part in results:
                result = results[part]
                line += f"\n{'':<15} {'ok' if result.ok else 'UNREACHABLE'}: {result.detail}"
            click.echo(line)
    failed = [part for part, result in results.items() if not result.ok]
    if failed:
        raise click.ClickException(f"unreachable: {', '.join(failed)}")

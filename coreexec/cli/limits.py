"""``coreexec limits``: global tag-concurrency limits stored in Redis, and who holds slots."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import click

from coreexec.errors import CoreExecError
from coreexec.instance import REDIS_URL_ENV
from coreexec.limits.global_rules import GlobalRules, rule_from_target
from coreexec.limits.keys import DEFAULT_NAMESPACE
from coreexec.limits.redis_limiter import RedisTagLimiter

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

T = TypeVar("T")


def _redis_url(url: str | None) -> str:
    return url or os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL


def _guard(work: Callable[[], T]) -> T:
    try:
        return work()
    except CoreExecError as exc:
        raise click.ClickException(str(exc)) from exc


redis_option = click.option(
    "--redis-url",
    default=None,
    metavar="URL",
    help=f"Redis holding the limits (default: ${REDIS_URL_ENV}, else {DEFAULT_REDIS_URL}).",
)
namespace_option = click.option(
    "--namespace",
    default=DEFAULT_NAMESPACE,
    show_default=True,
    help="Limiter namespace; runs share limits within one namespace.",
)


@click.group("limits")
def limits_group() -> None:
    """Global tag-concurrency limits: every run whose executor uses this Redis obeys them,
    merged with the executor's own tag_concurrency_limits (the smaller limit wins)."""


@limits_group.command("set")
@click.argument("target")
@click.argument("limit", type=click.IntRange(min=0))
@click.option(
    "--per-unique-value",
    is_flag=True,
    help="Give every value of the key its own LIMIT (TARGET is a key only).",
)
@redis_option
@namespace_option
def set_limit(
    target: str, limit: int, per_unique_value: bool, redis_url: str | None, namespace: str
) -> None:
    """Limit steps tagged TARGET to LIMIT at once, across all runs.

    TARGET is key=value (database=warehouse: steps with that tag value), key or key=*
    (every value of the key shares one limit), or a key with --per-unique-value.
    """

    def work() -> str:
        rule = rule_from_target(target, limit, per_unique_value=per_unique_value)
        rules = GlobalRules.from_url(_redis_url(redis_url), namespace=namespace)
        try:
            rules.set_limit(rule)
        finally:
            rules.close()
        return rule.describe()

    click.echo(f"set: {_guard(work)}")


@limits_group.command("rm")
@click.argument("target")
@click.option("--per-unique-value", is_flag=True, help="Remove the per-unique-value rule.")
@redis_option
@namespace_option
def remove_limit(
    target: str, per_unique_value: bool, redis_url: str | None, namespace: str
) -> None:
    """Remove the stored limit on TARGET (written as for `coreexec limits set`)."""

    def work() -> bool:
        rule = rule_from_target(target, 0, per_unique_value=per_unique_value)
        rules = GlobalRules.from_url(_redis_url(redis_url), namespace=namespace)
        try:
            return rules.delete_limit(rule.key, rule.value)
        finally:
            rules.close()

    if not _guard(work):
        raise click.ClickException(
            f"no stored limit on {target!r}; `coreexec limits ls` lists them"
        )
    click.echo(f"removed the limit on {target}")


@limits_group.command("ls")
@redis_option
@namespace_option
def list_limits(redis_url: str | None, namespace: str) -> None:
    """Show the stored rules, and every slot with its holders (run/step) and waiters."""
    url = _redis_url(redis_url)

    def work() -> None:
        rules = GlobalRules.from_url(url, namespace=namespace)
        limiter = RedisTagLimiter.from_url(url, namespace=namespace)
        try:
            stored = rules.list_limits()
            slots = limiter.slots()
        finally:
            rules.close()
            limiter.close()
        click.echo(f"stored rules ({namespace}):")
        for rule in stored:
            click.echo(f"  {rule.describe()}")
        if not stored:
            click.echo("  none (executors may still configure tag_concurrency_limits)")
        click.echo("\nslots in use:")
        if not slots:
            click.echo("  none")
        for slot in slots:
            click.echo(f"  {slot.name}  {len(slot.holders)}/{slot.limit} held")
            for holder in slot.holders:
                click.echo(f"    held by   run {holder.run_id}  step {holder.step_key}")
            for rank, waiter in enumerate(slot.waiters, start=1):
                click.echo(f"    waiter {rank}  run {waiter.run_id}  step {waiter.step_key}")

    _guard(work)

"""The launcher against the session's real stack (tests/integration/conftest.py starts it through Stack.up)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from streamcart.settings import Settings
from streamcart.stack import Stack
from streamcart.stack.admin import describe_topics, ensure_topics, stack_topics
from streamcart.stack.probes import admin_client
from streamcart.topics import DAY_MS, Topics, changelog_topic, topic_specs
from tests.integration.support import poll


def test_every_process_runs_healthy_with_its_memory_and_uptime(stack: Stack, settings: Settings) -> None:
    def unhealthy() -> list[tuple[str, object]]:
        return [(row.name, row.health) for row in stack.status() if not (row.running and row.health and row.health.ok)]

    # Connect's row counts its sinks: one left FAILED by an earlier test is restarted by the sink keeper, so the
    # stack is healthy again within a few of its checks (and this test does not depend on running first).
    wait_s = 3 * settings.sink_keeper_interval_s + 10
    deadline = time.monotonic() + wait_s
    while (trouble := unhealthy()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert trouble == [], f"still unhealthy after {wait_s:.0f} s"
    rows = stack.status()
    assert [row.name for row in rows] == stack.names
    assert all(row.rss_bytes and row.rss_bytes > 10 * 2**20 for row in rows)
    assert all(row.uptime_s is not None and row.uptime_s >= 0 for row in rows)


def test_the_workers_share_every_partition_between_them_and_report_their_lag(stack: Stack, settings: Settings) -> None:
    deadline = time.monotonic() + 60
    while True:
        workers = [row for row in stack.status() if row.assigned is not None]
        owned = sorted(p for row in workers for p in row.assigned or ())
        if owned == list(range(settings.partitions)) or time.monotonic() > deadline:
            break
        time.sleep(1)  # a rebalance may still be settling
    assert owned == list(range(settings.partitions))
    assert all(isinstance(row.lag, int) and row.lag >= 0 for row in workers)


def test_a_second_up_while_everything_runs_changes_nothing(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    pids = {name: stack.record(name).pid for name in stack.names}  # type: ignore[union-attr]
    capsys.readouterr()
    timings = stack.up()
    assert {name: stack.record(name).pid for name in stack.names} == pids  # type: ignore[union-attr]
    if timings:
        # A readiness check that was slow to answer on a loaded machine makes `up` wait for it instead of
        # saying "nothing to do"; it still starts nothing.
        said = capsys.readouterr().out
        assert all(f"{name}: already running" in said for name in stack.names), said


def test_the_topics_exist_with_their_partition_counts_and_cleanup_policies(stack: Stack, settings: Settings) -> None:
    on_broker = {topic.name: topic for topic in describe_topics(settings)}
    for spec in topic_specs(settings):
        assert on_broker[spec.name].partitions == spec.partitions
        assert on_broker[spec.name].cleanup_policy == spec.config["cleanup.policy"]
    assert topic_settings(settings, changelog_topic(settings.app_id, "orders"), "segment.ms") == \
        str(settings.compacted_segment_ms)


def topic_settings(settings: Settings, topic: str, key: str) -> str:
    admin = admin_client(settings)  # alive until the answer is in
    resource = ConfigResource(ResourceType.TOPIC, topic)
    return str(admin.describe_configs([resource])[resource].result()[key].value)


def alter(settings: Settings, topic: str, key: str, value: str | None) -> None:
    """Set ``key`` of ``topic`` (``None``: delete it, as a topic created without it), and wait until it reads back."""
    admin = admin_client(settings)
    operation = AlterConfigOpType.DELETE if value is None else AlterConfigOpType.SET
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=operation)])
    admin.incremental_alter_configs([resource])[resource].result()
    poll(lambda: value is None or topic_settings(settings, topic, key) == value, timeout_s=10, what=f"{topic} {key}")


def test_a_topic_an_older_streamcart_created_gets_the_settings_it_lacks_and_keeps_its_own(
    stack: Stack, settings: Settings
) -> None:
    """A changelog created without a segment time (Kafka's 7 days) gets the spec's from `up` and `init`; a setting
    an operator changed (a longer retention of commands) stays theirs."""
    changelog = changelog_topic(settings.app_id, "stock")
    commands = Topics.from_settings(settings).order_commands
    alter(settings, changelog, "segment.ms", None)
    poll(lambda: topic_settings(settings, changelog, "segment.ms") == str(7 * DAY_MS), timeout_s=10,
         what="the broker's default segment time")
    alter(settings, commands, "retention.ms", str(30 * DAY_MS))

    ensured = ensure_topics(settings, stack_topics(settings))
    assert (ensured.created, ensured.reconfigured) == ([], [changelog])
    poll(lambda: topic_settings(settings, changelog, "segment.ms") == str(settings.compacted_segment_ms),
         timeout_s=10, what="the spec's segment time")
    assert topic_settings(settings, commands, "retention.ms") == str(30 * DAY_MS)
    assert ensure_topics(settings, stack_topics(settings)).summary() == "all present"  # nothing else lacked
    alter(settings, commands, "retention.ms", str(7 * DAY_MS))  # as the spec has it, for the tests after this one

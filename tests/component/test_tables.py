"""Table declarations: the changelog carries keys exactly as the source topics do."""

from agents.app import create_faust_app
from streamcart.settings import Settings
from tables import declare_tables


def test_every_changelog_writes_and_reads_keys_as_plain_utf8(tmp_path):
    app = create_faust_app(Settings(home=tmp_path, partitions=4), store="memory://")
    tables = declare_tables(app, 4)
    for table in app.tables.values():
        topic = table.changelog_topic
        assert (table.key_serializer, topic.key_serializer) == ("utf8", "utf8"), table.name
        assert topic.value_serializer == table.value_serializer  # recovery reads what the table writes
        # What recovery does with a changelog record's key: it must come back as the id, not fail as JSON.
        assert app.serializers.loads_key(topic.key_type, b"o-123", serializer=topic.key_serializer) == "o-123"
    assert tables.orders.name == "orders"


def test_the_stack_creates_every_tables_changelog_with_the_saga_partition_count(tmp_path):
    from streamcart.topics import topic_specs

    settings = Settings(home=tmp_path, partitions=4)
    app = create_faust_app(settings, store="memory://")
    declare_tables(app, 4)
    specs = {spec.name: spec for spec in topic_specs(settings)}
    for table in app.tables.values():
        spec = specs[table.changelog_topic.get_topic_name()]
        assert (spec.partitions, spec.config["cleanup.policy"]) == (4, "compact")
        # Compacted for real: a segment closes (and becomes compactable) within minutes, not Kafka's 7 days.
        assert (spec.config["segment.ms"], spec.config["segment.bytes"]) == (
            str(settings.compacted_segment_ms), str(64 * 2**20))

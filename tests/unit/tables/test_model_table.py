"""A typed table answers from its decoded values only while the store holds the very bytes they came from."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from tables.typed import ModelTable


class FakeTable(dict[str, bytes]):
    """A faust table as ModelTable uses it: item writes, and reads from its store (the same dict here)."""

    @property
    def data(self) -> FakeTable:
        return self


class Item(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    count: int


class CountingItem(Item):
    decoded: ClassVar[int] = 0

    @classmethod
    def model_validate_json(cls, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        CountingItem.decoded += 1
        return super().model_validate_json(*args, **kwargs)


def test_a_value_read_again_is_not_decoded_again() -> None:
    CountingItem.decoded = 0
    store = FakeTable({"a": Item(name="a", count=1).model_dump_json().encode()})
    table = ModelTable(store, CountingItem)

    first, second = table.get("a"), table.get("a")

    assert first == second == CountingItem(name="a", count=1)
    assert CountingItem.decoded == 1


def test_a_value_written_through_the_table_is_read_back_without_decoding() -> None:
    CountingItem.decoded = 0
    table = ModelTable(FakeTable(), CountingItem)
    table.put("a", CountingItem(name="a", count=2))

    assert table.get("a") == CountingItem(name="a", count=2)
    assert CountingItem.decoded == 0


def test_bytes_written_behind_the_tables_back_win_over_what_it_remembers() -> None:
    # Changelog recovery and standby updates write the store directly.
    store = FakeTable()
    table = ModelTable(store, Item)
    table.put("a", Item(name="a", count=1))

    store["a"] = Item(name="a", count=7).model_dump_json().encode()
    assert table.get("a") == Item(name="a", count=7)

    del store["a"]
    assert table.get("a") is None


def test_it_remembers_a_bounded_number_of_values_dropping_the_oldest_first() -> None:
    store = FakeTable()
    table = ModelTable(store, Item)
    table.DECODED_CACHE_SIZE = 3
    for i in range(5):
        table.put(str(i), Item(name=str(i), count=i))

    assert sorted(table._decoded) == ["2", "3", "4"]
    assert [table.get(str(i)) for i in range(5)] == [Item(name=str(i), count=i) for i in range(5)]  # all still there

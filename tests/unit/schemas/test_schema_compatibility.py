"""Every message schema stays backward- and forward-compatible with every committed version of itself.

Messages live in Kafka for ever (events are the system of record), and producers and consumers of different
versions run side by side, so each schema is checked both ways, with fastavro's schema resolution on sample
records: data written by an old version must be readable with the new schema (backward) and data written by
the new schema readable with an old one (forward). "Old" is every version of ``schemas/avro/<Name>.avsc`` in
the git history (HEAD's, the one before it, and so on: the registry is set to FULL_TRANSITIVE to match);
"new" is what the Python types generate now. In a clean CI checkout the history is what gives the test teeth.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections import defaultdict
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas.avro import AVRO_DIR, AvroSchema, catalog

# --- the check ----------------------------------------------------------------------------------------------


def incompatibilities(old: AvroSchema, new: AvroSchema) -> list[str]:
    """Why ``new`` cannot replace ``old`` in both directions; empty when it can."""
    problems = []
    for direction, writer, reader in (("backward (old writer, new reader)", old, new),
                                      ("forward (new writer, old reader)", new, old)):
        for datum in sample_data(writer):
            try:
                out = io.BytesIO()
                schemaless_writer(out, parse_schema(writer), datum)
                out.seek(0)
                schemaless_reader(out, parse_schema(writer), parse_schema(reader))
            except Exception as exc:
                problems.append(f"{direction}: {type(exc).__name__}: {exc}")
    return list(dict.fromkeys(problems))  # both samples often fail for the same reason


def sample_data(schema: AvroSchema) -> list[Any]:
    """Two records valid for ``schema``: one with every optional and collection filled, one with all empty.

    Filled and empty together take every branch of every union, so resolution checks each field's type.
    """
    return [_datum(schema, filled, {}, "") for filled in (True, False)]


def _datum(schema: Any, filled: bool, named: dict[str, Any], namespace: str) -> Any:
    if isinstance(schema, str):
        if schema in _PRIMITIVE_SAMPLES:
            return _PRIMITIVE_SAMPLES[schema]
        full = schema if "." in schema else f"{namespace}.{schema}"
        return _datum(named[full], filled, named, namespace)
    if isinstance(schema, list):
        branches = [branch for branch in schema if branch != "null"]
        if not filled and len(branches) < len(schema):
            return None
        return _datum(branches[0], filled, named, namespace)
    kind = schema["type"]
    if kind == "record":
        namespace = schema.get("namespace", namespace)
        full = schema["name"] if "." in schema["name"] else f"{namespace}.{schema['name']}"
        named[full] = schema
        return {f["name"]: _datum(f["type"], filled, named, namespace) for f in schema["fields"]}
    if kind == "array":
        return [_datum(schema["items"], filled, named, namespace)] * 2 if filled else []
    if kind == "map":
        return {"key": _datum(schema["values"], filled, named, namespace)} if filled else {}
    return _datum(kind, filled, named, namespace)


_PRIMITIVE_SAMPLES: dict[str, Any] = {
    "null": None, "boolean": True, "int": 7, "long": 7, "float": 1.5, "double": 1.5,
    "bytes": b"x", "string": "s",
}


# --- the history --------------------------------------------------------------------------------------------


@cache
def committed_versions() -> dict[str, list[tuple[str, AvroSchema]]]:
    """Record name → each distinct committed version of its ``.avsc`` as (commit, schema), newest first."""
    git = shutil.which("git")
    if git is None or _run(git, "rev-parse", "--is-inside-work-tree", check=False).strip() != "true":
        # Never a skip: a check that silently does not run is a check CI believes passed.
        pytest.fail("not a git checkout: the compatibility check needs the repository's history")
    if _run(git, "rev-parse", "--is-shallow-repository").strip() == "true":
        pytest.fail("shallow git clone: the compatibility check needs the full history (e.g. fetch-depth: 0)")
    root = Path(_run(git, "rev-parse", "--show-toplevel").strip())
    folder = PurePosixPath(AVRO_DIR.resolve().relative_to(root.resolve()).as_posix())

    # One `git log --raw` lists every blob each .avsc ever had; one `git cat-file --batch` reads them all.
    log = _run(git, "log", "--raw", "--no-abbrev", "--no-renames", "--format=commit %H", "--", str(AVRO_DIR))
    blobs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    commit = ""
    for line in log.splitlines():
        if line.startswith("commit "):
            commit = line.split()[1]
        elif line.startswith(":"):
            meta, path = line.split("\t", 1)
            blob = meta.split()[3]
            name = PurePosixPath(path)
            if name.suffix == ".avsc" and name.parent == folder and set(blob) != {"0"}:  # all zeros: deleted
                blobs[name.stem].append((commit, blob))
    # A guard on the plumbing above: every .avsc in HEAD must have turned up, or the check checks nothing.
    in_head = _run(git, "ls-tree", "-r", "--name-only", "HEAD", "--", str(AVRO_DIR), check=False).split()
    missed = {PurePosixPath(path).stem for path in in_head} - blobs.keys()
    assert not missed, f"git log missed the history of {sorted(missed)}"
    texts = _read_blobs(git, {blob for versions in blobs.values() for _, blob in versions})

    history: dict[str, list[tuple[str, AvroSchema]]] = {}
    for name, versions in blobs.items():
        seen: set[str] = set()
        history[name] = []
        for commit, blob in versions:
            if blob not in seen:
                seen.add(blob)
                history[name].append((commit[:12], json.loads(texts[blob])))
    return history


def _read_blobs(git: str, blobs: set[str]) -> dict[str, str]:
    ordered = sorted(blobs)
    out = subprocess.run(
        [git, "cat-file", "--batch"], input="".join(f"{b}\n" for b in ordered).encode(),
        cwd=AVRO_DIR, capture_output=True, check=True,
    ).stdout
    texts, pos = {}, 0
    for blob in ordered:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        texts[blob] = out[header_end + 1 : header_end + 1 + size].decode()
        pos = header_end + 1 + size + 1  # the content is followed by a newline
    return texts


def _run(*args: str, check: bool = True) -> str:
    result = subprocess.run(args, cwd=AVRO_DIR, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


# --- the tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(catalog()))
def test_every_schema_reads_and_is_read_by_each_committed_version_of_itself(name: str):
    current = catalog()[name].schema
    problems = [
        f"{name} vs its version in {commit}: {problem}"
        for commit, old in committed_versions().get(name, [])  # no earlier version: nothing to break
        for problem in incompatibilities(old, current)
    ]
    assert not problems, "\n".join(problems) + (
        "\nAdd fields with a default; never rename or retype one. A breaking change needs a new record name."
    )


def test_no_message_schema_that_was_ever_committed_has_disappeared():
    # Events are kept for ever: a record name that vanished leaves its messages in Kafka undecodable.
    gone = sorted(committed_versions().keys() - catalog().keys())
    assert not gone, f"message types removed or renamed while Kafka may still hold them: {gone}"


# The check itself, on hand-made changes to a fixed schema, so it is known to fail when it should.

def _order(*extra: dict[str, Any], rename: str = "", retype: dict[str, Any] | None = None) -> AvroSchema:
    """A small order record with a nested record and an optional field, edited as the test says."""
    line = {"type": "record", "name": "Line", "fields": [{"name": "sku", "type": "string"},
                                                         {"name": "quantity", "type": "long"}]}
    fields: list[dict[str, Any]] = [
        {"name": "order_id", "type": "string"},
        {"name": "lines", "type": {"type": "array", "items": line}},
        {"name": "note", "type": ["null", "string"], "default": None},
        *extra,
    ]
    for field in fields:
        if field["name"] == rename:
            field["name"] = f"{rename}_renamed"
    for name, avro_type in (retype or {}).items():
        next(field for field in fields if field["name"] == name)["type"] = avro_type
    return {"type": "record", "name": "Order", "namespace": "test", "fields": fields}


def test_the_check_accepts_an_unchanged_schema():
    assert incompatibilities(_order(), _order()) == []


def test_the_check_accepts_a_new_field_with_a_default():
    assert incompatibilities(_order(), _order({"name": "channel", "type": "string", "default": "web"})) == []


def test_the_check_rejects_a_new_field_without_a_default():
    problems = incompatibilities(_order(), _order({"name": "channel", "type": "string"}))
    assert [p for p in problems if p.startswith("backward")]


def test_the_check_rejects_a_removed_field_without_a_default():
    problems = incompatibilities(_order({"name": "channel", "type": "string"}), _order())
    assert [p for p in problems if p.startswith("forward")]


def test_the_check_rejects_a_renamed_field_both_ways():
    problems = incompatibilities(_order(), _order(rename="order_id"))
    assert {p.split()[0] for p in problems} == {"backward", "forward"}


def test_the_check_rejects_a_changed_type_inside_a_nested_record():
    line = {"type": "record", "name": "Line", "fields": [{"name": "sku", "type": "string"},
                                                         {"name": "quantity", "type": "string"}]}
    assert incompatibilities(_order(), _order(retype={"lines": {"type": "array", "items": line}}))


def test_the_check_rejects_a_changed_type_inside_an_optional_field():
    assert incompatibilities(_order(), _order(retype={"note": ["null", "long"]}))

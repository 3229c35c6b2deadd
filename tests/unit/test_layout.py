from pathlib import Path

import tables

ROOT = Path(__file__).resolve().parents[2]


def test_tables_is_this_projects_package_not_pytables():
    # PyPI's PyTables also imports as ``tables``; if it were installed it would shadow or be shadowed.
    assert Path(tables.__file__).resolve().parent == ROOT / "tables"
    assert hasattr(tables, "declare_tables")


def test_the_required_top_level_layout_exists():
    for name in ["agents", "schemas", "tables", "api", "connectors", "tests", "docker-compose.yml",
                 "pyproject.toml", "README.md"]:
        assert (ROOT / name).exists(), name

"""Changelog-backed tables and their typed accessors (DESIGN.md §1).

Note: PyPI's PyTables also imports as ``tables``; it must never be installed next to this package (a test guards
that this ``tables`` is ours).
"""

from tables.declarations import StateTables, declare_tables
from tables.typed import DeadlineTable, ModelTable

__all__ = ["DeadlineTable", "ModelTable", "StateTables", "declare_tables"]

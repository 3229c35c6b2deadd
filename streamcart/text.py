"""Text that every reader takes: no control character reaches a table, the warehouse, a log line or a terminal."""

import re

#: Control characters, as a class's contents (the same spelling in Python's ``re`` and in a JSON Schema pattern):
#: C0, DEL and C1 (a NUL PostgreSQL refuses, so a warehouse sink stops on its row; a newline forging a log line; an
#: escape sequence for a terminal); Unicode's line and paragraph separators (``str.splitlines`` and JavaScript end a
#: line there); and the bidirectional embeddings, overrides and isolates, which make text read in another order
#: than it is stored ("Trojan Source", CVE-2021-42574); and U+FEFF, a byte order mark, invisible (and whitespace to
#: JavaScript's ``\s`` but not to Python's or Rust's). The marks (U+200E, U+200F) stay: right-to-left text uses them.
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff"
CONTROL = re.compile(f"[{CONTROL_CHARS}]")
#: An ISO 4217 currency code.
CURRENCY_PATTERN = r"^[A-Z]{3}$"


def printable(value: str) -> str:
    """``value``, which holds no control character (:data:`CONTROL_CHARS`); ``ValueError`` saying where one is."""
    if (found := CONTROL.search(value)) is not None:
        raise ValueError(f"must not contain control characters (found {found.group()!r} at {found.start()})")
    return value


def is_digits(text: str) -> bool:
    """Whether ``text`` is ASCII digits, which ``int()`` takes (``"²".isdigit()`` is true, and ``int("²")`` fails)."""
    return text.isascii() and text.isdigit()

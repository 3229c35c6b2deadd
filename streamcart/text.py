"""Text that every reader takes: no control character reaches a table, the warehouse, a log line or a terminal."""

import re

#: Control characters (C0, DEL, C1): a NUL PostgreSQL refuses (a warehouse sink stops on such a row), a newline
#: forging a log line, an escape sequence for a terminal.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def is_digits(text: str) -> bool:
    """Whether ``text`` is ASCII digits, which ``int()`` takes (``"²".isdigit()`` is true, and ``int("²")`` fails)."""
    return text.isascii() and text.isdigit()

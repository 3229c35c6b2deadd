"""The payment gateway: a small separate HTTP service that behaves like a card processor (DESIGN.md §6)."""

"""The HTTP API (DESIGN.md §5), served by every worker."""

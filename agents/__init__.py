"""The faust app and one module per flow. Agents are thin adapters: decode, load, decide, store, send."""

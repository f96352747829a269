"""Inheritune (docs/methods.md §3): attention-degeneration analysis, inherit the first k layers, grow."""

"""Inheritune (METHODS.md §3): attention-degeneration analysis, inherit the first k layers, grow."""

"""The `jaxshare` command: one module per command group."""

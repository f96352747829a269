"""The storage floor: local paths and URLs (etils.epath, fsspec), atomic outputs and their markers,
and jaxshare's cache. Imports nothing from jaxshare but `jaxshare.errors`."""

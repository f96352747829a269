"""The one YAML reader of jaxshare: PyYAML's safe loader, but a key given twice in one mapping is
refused instead of silently keeping the last value (a config or plan that says two things must
not run as one of them). Imports nothing from jaxshare but jaxshare.errors."""
from __future__ import annotations

import yaml

from jaxshare.errors import InputError


class DuplicateKeyError(InputError):
    """A YAML mapping that names the same key twice."""


class _StrictLoader(yaml.SafeLoader):
    where = "<string>"


_MERGE = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _StrictLoader, node, deep=False):
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:  # `<<: *base` then a key of its own is an override, by design
                continue
            key, line = loader.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(f"{loader.where}: key {key!r} appears twice (lines {seen[key]} and "
                                            f"{line}); keep one of them")
                seen[key] = line
            except TypeError:  # an unhashable key: the safe loader's own error says so
                continue
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def safe_load(text: str, where: str = "<string>"):
    """yaml.safe_load of text, refusing duplicate keys (DuplicateKeyError naming `where` and the lines).
    Syntax errors stay yaml.YAMLError, so callers word them in their own terms."""
    loader = _StrictLoader(text)
    loader.where = str(where)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()

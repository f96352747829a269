"""How a failed write is told: one error type naming the destination, and the cause of an I/O
error in a few words, whichever library raised it (OSError, safetensors, orbax/tensorstore)."""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from jaxshare.errors import JaxshareError


class OutputError(JaxshareError):
    """An output that cannot be written where asked; the message names the path and the cause."""


class OutputExistsError(OutputError, FileExistsError):
    """The destination holds something and --overwrite was not given."""


def shown_path(path) -> str:
    """A path as text that can always be printed (a name that is not UTF-8 shows its bytes)."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return repr(os.fsencode(text))
    return text


def check_utf8(path, what: str = "path") -> None:
    """Refuse a path that is not UTF-8 text: safetensors, orbax and JSON manifests all need it."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise OutputError(f"{what} {shown_path(path)} is not UTF-8 encodable (its name holds bytes that are not "
                          "UTF-8 text): rename it or choose another path") from None


_IO_TEXT = re.compile(r"os_error_code='?(\d+)|os error (\d+)|\[Errno (\d+)\]")
_STATUS = re.compile(r"^(RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAVAILABLE|DATA_LOSS|NOT_FOUND|ALREADY_EXISTS"
                     r"|FAILED_PRECONDITION|INTERNAL|UNKNOWN): ")


def is_io_error(e: BaseException) -> bool:
    """An OSError, or a library's wrapping of one (safetensors, orbax/tensorstore)."""
    if isinstance(e, OSError):
        return True
    if type(e).__name__ == "SafetensorError":
        return True
    if isinstance(e, (ValueError, RuntimeError)):
        text = str(e)
        return bool(_IO_TEXT.search(text) or _STATUS.match(text))
    return False


def describe(e: BaseException, hide: Path | None = None) -> str:
    """The cause of an I/O error in a few words (`No space left on device`), plus the failing path
    when it is not inside the temporary directory `hide`."""
    code = getattr(e, "errno", None) if isinstance(e, OSError) else None
    if code is None:
        m = _IO_TEXT.search(str(e))
        code = next((int(g) for g in m.groups() if g), None) if m else None
    cause = os.strerror(code) if code else str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    where = getattr(e, "filename", None) if isinstance(e, OSError) else None
    if where and not (hide is not None and str(where).startswith(str(hide))):
        cause += f" ({where})"
    return cause


@contextmanager
def write_failures(shown: str, temporary: Callable[[], Path | None] = lambda: None) -> Iterator[None]:
    """Inside, any I/O failure (OSError, safetensors', orbax's) becomes one OutputError naming the
    destination and the cause; `temporary()` is the writer's scratch path, left out of the cause.
    Every writer of an output wraps its work in this, so none words a failure differently."""
    try:
        yield
    except OutputError:
        raise
    except Exception as e:
        if is_io_error(e):
            raise OutputError(f"cannot write {shown}: {describe(e, temporary())}") from None
        raise

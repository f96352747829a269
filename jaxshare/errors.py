"""One base for every error a user can cause.

The CLI catches `JaxshareError` (one line, exit 2) and the OS / library I/O errors that reading
and writing wrap; anything else is a bug in jaxshare and surfaces as a traceback. Each area keeps
its own subclass (raised where the cause is known); the subclasses also derive from the builtin
they replaced (`ValueError`, `KeyError`, ...) so that callers catching those keep working.

This module imports nothing from jaxshare: it is the floor every other module may stand on.
"""
from __future__ import annotations


class JaxshareError(Exception):
    """An error the user can fix (bad input, bad option, unusable output destination, ...)."""

    def __str__(self) -> str:
        # KeyError's str() quotes its message; ours never should
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UsageError(JaxshareError, ValueError):
    """An option or argument that cannot be honoured (named in the message)."""


class InputError(JaxshareError, ValueError):
    """Input data (a model file, a corpus, a token array) that cannot be used as it is."""


class CheckpointError(JaxshareError, ValueError):
    """A checkpoint or model directory that cannot be read or does not match what is asked."""


class MethodError(JaxshareError, ValueError):
    """A compression method's options that cannot be honoured (jaxshare.methods; plans prefix the step)."""


class MissingDependency(JaxshareError, ImportError):
    """An optional package a path needs is not installed; the message names the package and extra."""


class MissingAttribute(JaxshareError, AttributeError):
    """`jaxshare.<namespace>` (js.nnx) whose optional package is not installed: MissingDependency's
    one line, raised as an AttributeError so that `hasattr(js, "nnx")` answers False instead of
    raising (ImportError and AttributeError cannot share one class: their layouts conflict)."""


class Preempted(JaxshareError):
    """A run stopped by SIGTERM/SIGINT after saving a checkpoint; not an error in itself."""


# Exit codes of the CLI (README, Safety).
EXIT_OK = 0
EXIT_USER = 2         # one line on stderr naming the cause
EXIT_PREEMPTED = 3    # a training run saved a checkpoint and stopped on SIGTERM/SIGINT: resume it
EXIT_INTERRUPTED = 130  # Ctrl-C outside a training step loop: nothing half-written is left

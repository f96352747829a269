"""Training checkpoints: orbax's CheckpointManager in RUN_DIR/checkpoints, holding the training
state and, beside it, the data iterator's state (grain writes one JSON per process).

Every process joins every save and restore (orbax requires it; each writes its own shards).
Orbax writes arrays through tensorstore, which reaches local paths and gs://. On another
filesystem (any fsspec one: memory://, ...) a single-process run saves into a local staging
directory and commits a copy of each step to RUN_DIR/checkpoints/<step> (completion marker last);
a resume downloads the newest complete step first.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
import tempfile
import time

import jax

from jaxshare.errors import CheckpointError, JaxshareError
from jaxshare.storage import paths
from jaxshare.storage.atomic import describe, is_io_error
from jaxshare.training.config import TrainConfigError
from jaxshare.core.params import param_bytes
from jaxshare.training.memory import drop_checkpoints

TMP_TAG = ".orbax-checkpoint-tmp"  # orbax writes a step as <step>.orbax-checkpoint-tmp*, then renames it


class CheckpointWriteError(JaxshareError, OSError):
    """A checkpoint could not be written (its partial step was removed); the message says why and where."""


def sweep_tmp(ckpt_dir) -> list[str]:
    """Remove the partial steps (`<step>.orbax-checkpoint-tmp*`) a dead writer left in checkpoints/:
    call before a CheckpointManager opens the directory, on process 0 only."""
    d = paths.as_path(ckpt_dir)
    if not d.is_dir():
        return []
    gone = []
    for p in d.iterdir():
        if TMP_TAG in p.name and p.name.split(".", 1)[0].isdigit():
            p.rmtree() if p.is_dir() else p.unlink()
            gone.append(p.name)
    return gone


@contextlib.contextmanager
def _library_stderr_held():
    """Hold what tensorstore/orbax print straight to fd 2 while a synchronous save runs: a failed
    write makes its worker threads print a traceback each ("Event loop is closed") after we have
    the cause. Kept output is passed on; after a failure it is dropped for our one line."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield None
        return
    hold = tempfile.TemporaryFile()
    os.dup2(hold.fileno(), 2)
    failed = False
    try:
        yield hold
    except BaseException:
        failed = True
        time.sleep(0.2)  # the other writes of the failed save finish (and print) into the hold
        raise
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        if not failed:
            hold.seek(0)
            kept = hold.read()
            if kept:
                os.write(2, kept)
        hold.close()


def _steps(d) -> list[int]:
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and paths.is_complete(p))


class Checkpoints:
    def __init__(self, run_dir, keep: int, async_save: bool, resuming: bool):
        # deferred on purpose: orbax.checkpoint is slow to import (tensorstore); only a checkpointing run loads it
        import orbax.checkpoint as ocp

        self.run_dir = run_dir
        self.remote = paths.as_path(run_dir) / "checkpoints"
        if resuming and jax.process_index() == 0:
            sweep_tmp(self.remote)  # a save killed mid-write (or out of space) left its partial step
        self.staged = not paths.orbax_can_write(run_dir)
        self.async_save = async_save and not self.staged
        if self.staged:
            if jax.process_count() > 1:
                raise TrainConfigError(f"run_dir {run_dir}: orbax cannot write checkpoints there from several "
                                       "processes (tensorstore reaches local paths and gs://)")
            self.dir = tempfile.mkdtemp(prefix="jaxshare-ckpt-")
            have = _steps(self.remote) if resuming else []
            if have:
                paths.download_tree(self.remote / str(have[-1]), f"{self.dir}/{have[-1]}")
        else:
            self.dir = paths.local_str(self.remote) if paths.is_local(self.remote) else self.remote
        self.mngr = ocp.CheckpointManager(self.dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=self.async_save))

    @staticmethod
    def held(run_dir) -> bool:
        """Whether RUN_DIR/checkpoints holds any step (a new run must not start over one)."""
        d = paths.as_path(run_dir) / "checkpoints"
        return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())

    def latest_step(self):
        return self.mngr.latest_step()

    def _check_space(self, step: int, state) -> None:
        """Refuse a save that cannot fit before orbax starts it (a failed write is slow and noisy)."""
        where = self.dir if isinstance(self.dir, str) else None
        if where is None or jax.process_index() != 0:
            return
        need = param_bytes(state) + (1 << 20)
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            return
        if free < need:
            raise self._error(step, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                              f" ({need / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free)")

    def _error(self, step: int, e: BaseException, detail: str = "") -> CheckpointWriteError:
        return CheckpointWriteError(f"cannot write checkpoint step {step} in {self.remote}: {describe(e)}{detail}; "
                                    f"free space there (or move the run dir), then `jaxshare train resume "
                                    f"{self.run_dir}` continues from the last complete checkpoint")

    def _drop_partial(self, step: int) -> None:
        for d in {paths.as_path(str(self.dir)), self.remote}:
            try:
                for p in d.iterdir():
                    if p.name.split(".", 1)[0] == str(step) and TMP_TAG in p.name:
                        p.rmtree() if p.is_dir() else p.unlink()
            except OSError:
                pass

    def save(self, step: int, state, data_iter=None) -> None:
        # deferred on purpose: orbax.checkpoint is slow to import (tensorstore); only a checkpointing run loads it
        import orbax.checkpoint as ocp

        self._check_space(step, state)
        items = {"state": ocp.args.StandardSave(state)}
        if hasattr(data_iter, "get_state"):
            import grain  # deferred on purpose: optional ([train]); a checkpointable iterator is grain's

            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        try:
            with _library_stderr_held() if not self.async_save else contextlib.nullcontext():
                self.mngr.save(step, args=ocp.args.Composite(**items), force=True)
                if not self.async_save:
                    self.mngr.wait_until_finished()
        except Exception as e:
            if not is_io_error(e):
                raise
            # orbax logs each failed write and asyncio each unretrieved one: our line says it once
            for name in ("absl", "asyncio"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
            if jax.process_index() == 0:
                self._drop_partial(step)
            raise self._error(step, e) from None
        if self.staged:
            paths.upload_tree(f"{self.dir}/{step}", self.remote / str(step))
            kept = set(self.mngr.all_steps())
            for s in _steps(self.remote):
                if s not in kept:
                    (self.remote / str(s)).rmtree()

    def restore(self, step: int, abstract_state, data_iter=None):
        """The state restored straight into the shardings `abstract_state` carries; the data
        iterator (when checkpointable) is set to where it stood."""
        # deferred on purpose: orbax.checkpoint is slow to import (tensorstore); only a checkpointing run loads it
        import orbax.checkpoint as ocp

        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if hasattr(data_iter, "set_state"):
            import grain  # deferred on purpose: optional ([train]); a checkpointable iterator is grain's

            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            with _library_stderr_held():
                return self.mngr.restore(step, args=ocp.args.Composite(**items))["state"]
        except (ValueError, KeyError, TypeError) as e:  # shapes or tree of another model or config
            if is_io_error(e):
                raise CheckpointError(f"cannot read checkpoint step {step} in {self.remote}: {describe(e)}") from None
            first = str(e).strip().splitlines()[0].split(". ")[0][:200] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint step {step} in {self.remote} does not match this run's model and "
                                  f"config ({first}); resume with the run's own config.yaml") from None

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        return self.mngr.reached_preemption(step)

    def close(self) -> None:
        self.mngr.close()
        if self.staged:
            shutil.rmtree(self.dir, ignore_errors=True)

    def drop(self) -> None:
        """A completed run's checkpoints: its result is in final/ and hf/."""
        if jax.process_index() == 0:
            drop_checkpoints(self.remote)

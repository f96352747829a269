"""Training checkpoints: orbax's CheckpointManager in RUN_DIR/checkpoints, holding the training
state and, beside it, the data iterator's state (grain writes one JSON per process).

Every process joins every save and restore (orbax requires it; each writes its own shards).
Orbax writes arrays through tensorstore, which reaches local paths and gs://. On another
filesystem (any fsspec one: memory://, ...) a single-process run saves into a local staging
directory and commits a copy of each step to RUN_DIR/checkpoints/<step> (completion marker last);
a resume downloads the newest complete step first.
"""
from __future__ import annotations

import shutil
import tempfile

import jax

from jaxshare.training import paths
from jaxshare.training.config import TrainConfigError
from jaxshare.training.memory import drop_checkpoints


def _steps(d) -> list[int]:
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and paths.is_complete(p))


class Checkpoints:
    def __init__(self, run_dir, keep: int, async_save: bool, resuming: bool):
        import orbax.checkpoint as ocp

        self.remote = paths.as_path(run_dir) / "checkpoints"
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

    def save(self, step: int, state, data_iter=None) -> None:
        import orbax.checkpoint as ocp

        items = {"state": ocp.args.StandardSave(state)}
        if hasattr(data_iter, "get_state"):
            import grain

            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.mngr.save(step, args=ocp.args.Composite(**items), force=True)
        if not self.async_save:
            self.mngr.wait_until_finished()
        if self.staged:
            paths.upload_tree(f"{self.dir}/{step}", self.remote / str(step))
            kept = set(self.mngr.all_steps())
            for s in _steps(self.remote):
                if s not in kept:
                    (self.remote / str(s)).rmtree()

    def restore(self, step: int, abstract_state, data_iter=None):
        """The state restored straight into the shardings `abstract_state` carries; the data
        iterator (when checkpointable) is set to where it stood."""
        import orbax.checkpoint as ocp

        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if hasattr(data_iter, "set_state"):
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        return self.mngr.restore(step, args=ocp.args.Composite(**items))["state"]

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

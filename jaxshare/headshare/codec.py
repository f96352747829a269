"""Codecs of head sharing's kinds (jaxshare.io.kinds): `sharing` for a `Bank` of tied units and
`corrections` for a data-aware `CorrectedBank`."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from jaxshare.core.bank import Bank
from jaxshare.headshare import corrections, sharing
from jaxshare.headshare.corrected import CorrectedBank


class SharingCodec:
    key: ClassVar[str] = "sharing"
    kind: ClassVar[type] = Bank

    def manifest(self, params, cfg) -> dict:
        return sharing.manifest(params, cfg)

    def abstract(self, cfg, manifest: dict, base):
        return sharing.abstract_shared(cfg, manifest, base)

    def export_files(self, params, manifest: dict) -> dict[str, bytes]:
        return {}  # sharing.json alone restores the banks from the (tied, equal) dense weights

    def restore_hf(self, cfg, params, manifest: dict, source: Path):
        return sharing.from_dense(cfg, params, manifest)


class CorrectionsCodec:
    key: ClassVar[str] = "corrections"
    kind: ClassVar[type] = CorrectedBank

    def manifest(self, params, cfg) -> dict:
        return corrections.manifest(params, cfg)

    def abstract(self, cfg, manifest: dict, base):
        return corrections.abstract_corrected(cfg, manifest, base)

    def export_files(self, params, manifest: dict) -> dict[str, bytes]:
        return corrections.export_files(params, manifest)

    def restore_hf(self, cfg, params, manifest: dict, source: Path):
        return corrections.restore_hf(cfg, params, manifest, source)

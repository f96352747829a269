"""Codecs of head sharing's kinds (jaxshare.io.kinds): `sharing` for a `Bank` of tied units and
`corrections` for a data-aware `CorrectedBank`."""
from __future__ import annotations

from jaxshare.core.bank import Bank
from jaxshare.core.compressed import FunctionCodec
from jaxshare.headshare import corrections, sharing
from jaxshare.headshare.corrected import CorrectedBank

# sharing.json alone restores the banks from the (tied, equal) dense weights: no side files
SHARING = FunctionCodec("sharing", Bank, sharing.manifest, sharing.abstract_shared, lambda params, manifest: {},
                        lambda cfg, params, manifest, source: sharing.from_dense(cfg, params, manifest))

CORRECTIONS = FunctionCodec("corrections", CorrectedBank, corrections.manifest, corrections.abstract_corrected,
                            corrections.export_files, corrections.restore_hf)

"""The decision log: Parquet under the data dir locally, under an S3 prefix on AWS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.resources.decision_log.base import PART_FILE, DecisionLogResource
from eventreach_assets.resources.decision_log.local import LocalDecisionLog
from eventreach_assets.resources.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from eventreach_assets.resources.decision_log.s3 import S3DecisionLog

__all__ = ["PART_FILE", "DecisionLogResource", "LocalDecisionLog", "S3DecisionLog"]

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(__name__, {"S3DecisionLog": "s3"})

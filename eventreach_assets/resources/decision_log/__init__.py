"""The decision log: Parquet under the data dir locally, under an S3 prefix on AWS."""

from eventreach_assets.resources.decision_log.base import PART_FILE, DecisionLogResource
from eventreach_assets.resources.decision_log.local import LocalDecisionLog
from eventreach_assets.resources.decision_log.s3 import S3DecisionLog

__all__ = ["PART_FILE", "DecisionLogResource", "LocalDecisionLog", "S3DecisionLog"]

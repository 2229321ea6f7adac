"""Production resources exported by their packages but imported on first use.

The AWS and Snowflake implementations pull in dagster-aws, boto3 and botocore (~1.5 s and
~60 MB, dagster-snowflake several seconds more); every run worker of the local deployment
imports the code location and would pay for libraries it never calls. A package lists those
names here and keeps its local implementations as plain imports:

    __getattr__ = lazy_exports(__name__, {"S3DecisionLog": "s3"})

with the same names imported under `TYPE_CHECKING` for type checkers and IDEs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) for `package` that imports `names` (attribute ->
    submodule) when first asked for, and keeps it in the package so the next access is plain."""

    def __getattr__(name: str) -> Any:
        submodule = names.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{submodule}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__

"""Request and response models of the feature-flag admin endpoints."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.schemas.common import RequestModel

FLAG_EXAMPLE = {
    "AB_TEST_FEATURE": [{"percentageOfUsers": 0.25}, {"userRoles": ["admin"]}],
    "FEATURE_FLAG_2": False,
}


class FeatureFlags(BaseModel):
    """Every flag: ``true``, ``false`` or a list of rules."""

    enabled: bool = Field(description="FEATURE_FLAGS_ENABLED: whether flags are enforced.")
    flags: dict[str, Any] = Field(examples=[FLAG_EXAMPLE])


class FeatureFlagChange(RequestModel):
    """Flags to add or overwrite, and flags to remove (which makes them on again)."""

    add: dict[str, Any] | list[str] | None = Field(
        default=None,
        description="name -> true | false | [rules]; a plain list of names means true.",
        examples=[FLAG_EXAMPLE],
    )
    remove: list[str] | None = Field(default=None, examples=[["OLD_EXPERIMENT"]])

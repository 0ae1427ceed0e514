"""Request and response models of the feature-flag endpoints."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.schemas.common import RequestModel

FLAG_EXAMPLE = {
    "AB_TEST_FEATURE": [{"percentageOfUsers": 0.25}, {"userRoles": ["admin"]}],
    "FEATURE_FLAG_2": False,
}


#: What the flag endpoints say while FEATURE_FLAGS_ENABLED is False.
FLAGS_OFF_NOTICE = (
    "FEATURE_FLAGS_ENABLED is False: these flags are stored but not enforced; "
    "they apply once it is True and the service has restarted."
)


class FeatureFlags(BaseModel):
    """Every flag: ``true``, ``false`` or a list of rules."""

    enabled: bool = Field(description="FEATURE_FLAGS_ENABLED: whether flags are enforced.")
    notice: str | None = Field(
        description="Set while FEATURE_FLAGS_ENABLED is False: changes are stored but "
        "nothing obeys them. Null while flags are enforced.",
        examples=[None, FLAGS_OFF_NOTICE],
    )
    flags: dict[str, Any] = Field(examples=[FLAG_EXAMPLE])
    protected: dict[str, str] = Field(
        description="Flags this API refuses to change (name -> the endpoint it guards and "
        "why): with one off nobody could sign in, turn the flags back on, or pass a health "
        "check. The command line (`python -m app.cli flags set`) still sets them.",
        examples=[{"LOGIN": "POST /api/auth/login (signing in)"}],
    )

    @classmethod
    def of(cls, flags: dict[str, Any], *, enabled: bool, protected: dict[str, str]) -> FeatureFlags:
        """The answer for ``flags``, saying whether they are enforced."""
        notice = None if enabled else FLAGS_OFF_NOTICE
        return cls(enabled=enabled, notice=notice, flags=flags, protected=protected)


class FeatureFlagChange(RequestModel):
    """Flags to add or overwrite, and flags to remove (which makes them on again)."""

    add: dict[str, Any] | list[str] | None = Field(
        default=None,
        description="name -> true | false | [rules]; a plain list of names means true.",
        examples=[FLAG_EXAMPLE],
    )
    remove: list[str] | None = Field(default=None, examples=[["OLD_EXPERIMENT"]])


class CallerFeatureFlags(BaseModel):
    """The flags as they apply to the caller: ``true`` (on) or ``false`` (off)."""

    enabled: bool = Field(
        description="FEATURE_FLAGS_ENABLED: whether flags are enforced. While False "
        "nothing is switched off, and every flag listed is true."
    )
    flags: dict[str, bool] = Field(
        description="Every flag of the flag file, evaluated for the caller (rules by role "
        "and percentage included; an anonymous caller has every rule-based flag off). A "
        "flag that is not listed is on.",
        examples=[{"AB_TEST_FEATURE": False, "READ_ME": True, "SIGNUP": True}],
    )

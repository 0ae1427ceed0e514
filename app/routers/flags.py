"""Feature flags as they apply to the caller, for clients that hide what is off."""

from __future__ import annotations

from fastapi import APIRouter

from app.core.openapi import OPTIONAL_BEARER
from app.routers.deps import FlagStoreDep, OptionalReaderAuth, SettingsDep
from app.schemas.common import error_responses
from app.schemas.flags import CallerFeatureFlags
from app.services import flags as flag_service

router = APIRouter(prefix="/feature-flags", tags=["feature-flags"])


@router.get(
    "/me",
    response_model=CallerFeatureFlags,
    responses=error_responses(403, 429),
    openapi_extra=OPTIONAL_BEARER,
)
async def read_my_feature_flags(
    auth: OptionalReaderAuth, store: FlagStoreDep, settings: SettingsDep
) -> CallerFeatureFlags:
    """The feature flags as they apply to the caller, signed in or anonymous.

    Each flag of the flag file is evaluated as the service evaluates it for this
    caller's requests: a rule by role or by percentage of users holds for some users
    only, and a rule-based flag is off for an anonymous caller (or one whose token is
    refused: no 401 here). Only names and ``true``/``false`` are given, never the
    rules. A flag that is not listed is on. While FEATURE_FLAGS_ENABLED is False
    nothing is enforced: ``enabled`` is false and every flag listed is true.

    Returns
    -------
    CallerFeatureFlags
        ``enabled`` (FEATURE_FLAGS_ENABLED) and ``flags``: name -> on for the caller.

    Raises
    ------
    403
        ``FEATURE_DISABLED``: this endpoint's own flag (``READ_MY_FEATURE_FLAGS``) is off.
    429
        ``RATE_LIMITED``: the global rate limit.
    """
    user = auth.user if auth is not None else None
    enforced = settings.FEATURE_FLAGS_ENABLED
    return CallerFeatureFlags(
        enabled=enforced, flags=flag_service.flags_for(store, user, enforced=enforced)
    )

"""SQLAlchemy models. Importing this package registers every table on ``Base.metadata``."""

from app.models.audit_event import AuditEvent
from app.models.base import Base, new_uuid, now_epoch
from app.models.bluesky import BlueskyClientKey, BlueskySession
from app.models.external_account import ExternalAccount
from app.models.feature_flag import FeatureFlag
from app.models.file import File, user_file
from app.models.oauth_token import OAuthToken
from app.models.oidc import OidcClient, OidcCode, OidcConsent, OidcGrant, OidcRefreshToken
from app.models.otp_challenge import OtpChallenge
from app.models.passkey import Passkey, WebAuthnChallenge
from app.models.recovery_code import RecoveryCode
from app.models.rotated_refresh_token import RotatedRefreshToken
from app.models.scheduled_job import ScheduledJob
from app.models.session import Session
from app.models.signing_key import SigningKey
from app.models.used_token import UsedToken
from app.models.user import User
from app.models.user_event import UserEvent
from app.models.webhook import WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = [
    "AuditEvent",
    "Base",
    "BlueskyClientKey",
    "BlueskySession",
    "ExternalAccount",
    "FeatureFlag",
    "File",
    "OAuthToken",
    "OidcClient",
    "OidcCode",
    "OidcConsent",
    "OidcGrant",
    "OidcRefreshToken",
    "OtpChallenge",
    "Passkey",
    "RecoveryCode",
    "RotatedRefreshToken",
    "ScheduledJob",
    "Session",
    "SigningKey",
    "UsedToken",
    "User",
    "UserEvent",
    "WebAuthnChallenge",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "new_uuid",
    "now_epoch",
    "user_file",
]

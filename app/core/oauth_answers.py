"""What providers answer, read into typed shapes before anything else uses it.

One rule for every field. A field that says who the user is (the external id, the
email, whether that email is verified) must be exactly right, or the whole answer is
refused (:class:`ProviderAnswerInvalid`, a 502 for the client): guessing there could
open or link the wrong account. A field that is only shown (username, display name,
picture) is dropped when it has the wrong type or cannot be used, and cut when it is
too long: the sign-in still works, a local username is derived from what is left,
and the user can change it all later. The token answer is protocol, not profile: any
member of the wrong type refuses it.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool, ValidationError

from app.schemas.fields import check_email

#: Ids of every supported provider are numbers or short base-36/base-64 words.
EXTERNAL_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
#: external_account.username and .display_name hold 255 characters.
SHOWN_TEXT_MAX_LENGTH = 255
#: external_account.picture_url holds 2048 characters; a longer URL is not cut (it
#: would point elsewhere) but dropped.
PICTURE_URL_MAX_LENGTH = 2048
#: Discord sends a picture as a hash that the URL is built from.
DISCORD_AVATAR_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,64}$")
#: Tokens go into an Authorization header: printable ASCII, bounded.
TOKEN_PATTERN = re.compile(r"^[\x21-\x7e]{1,8192}$")
#: The end of year 9999: a token said to expire later is nonsense (and would not fit).
TOKEN_EXPIRES_AT_MAX = 253402300799

Model = TypeVar("Model", bound=BaseModel)


class ProviderAnswerInvalid(ValueError):
    """A provider's answer that cannot be used; the message names the part at fault,
    never its value (it may be a token)."""


def _external_id(value: Any) -> str:
    # bool is an int in Python, never an id.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a string or an integer")
    text = str(value)
    if not EXTERNAL_ID_PATTERN.match(text):
        raise ValueError("must be 1 to 255 letters, digits, '.', '_' or '-'")
    return text


def _email(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return check_email(value)


def _shown_text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    # NUL and other controls, and lone surrogates, cannot be stored (PostgreSQL refuses
    # them) and mean nothing on screen.
    kept = "".join(ch for ch in value if unicodedata.category(ch) not in ("Cc", "Cs"))
    return kept.strip()[:SHOWN_TEXT_MAX_LENGTH] or None


def picture_url(value: Any) -> str | None:
    """An absolute http(s) URL without spaces or controls, or None."""
    if not isinstance(value, str) or len(value) > PICTURE_URL_MAX_LENGTH:
        return None
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return value


def _discord_avatar(value: Any) -> str | None:
    return value if isinstance(value, str) and DISCORD_AVATAR_PATTERN.match(value) else None


def _reddit_icon(value: Any) -> str | None:
    # Reddit's icon URL carries resizing parameters that only get in the way.
    return picture_url(value.split("?")[0]) if isinstance(value, str) else None


def _token_text(value: Any) -> str:
    if not isinstance(value, str) or not TOKEN_PATTERN.match(value):
        raise ValueError("must be 1 to 8192 printable ASCII characters")
    return value


def _optional_token_text(value: Any) -> str | None:
    return None if value is None else _token_text(value)


def _token_type(value: Any) -> str:
    if not isinstance(value, str) or value.lower() != "bearer":
        raise ValueError("must be 'bearer'")
    return value


def _expires_at(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    if not 0 < value <= TOKEN_EXPIRES_AT_MAX:
        raise ValueError("is not a date")
    return value


ExternalId = Annotated[str, PlainValidator(_external_id)]
Email = Annotated[str | None, PlainValidator(_email)]
Verified = StrictBool | None
ShownText = Annotated[str | None, PlainValidator(_shown_text)]
PictureUrl = Annotated[str | None, PlainValidator(picture_url)]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class GitHubUser(_Answer):
    """``GET /user``."""

    id: ExternalId
    login: ShownText = None
    name: ShownText = None
    email: Email = None
    avatar_url: PictureUrl = None


class GitHubEmail(_Answer):
    """One entry of ``GET /user/emails``."""

    email: Email
    primary: StrictBool = False
    verified: StrictBool = False


class GitHubEmails(_Answer):
    """``GET /user/emails``: a list (wrapped here to validate it as one)."""

    emails: list[GitHubEmail]


class DiscordUser(_Answer):
    """``GET /users/@me``."""

    id: ExternalId
    username: ShownText = None
    global_name: ShownText = None
    email: Email = None
    verified: Verified = None
    avatar: Annotated[str | None, PlainValidator(_discord_avatar)] = None


class TwitchUser(_Answer):
    """One entry of ``GET /users``' ``data``."""

    id: ExternalId
    login: ShownText = None
    display_name: ShownText = None
    email: Email = None
    profile_image_url: PictureUrl = None


class TwitchUsers(_Answer):
    """``GET /users``: the signed-in user is the first of ``data``."""

    data: list[TwitchUser] = Field(min_length=1)


class GoogleUserInfo(_Answer):
    """The OpenID Connect userinfo (or the ID token's claims)."""

    sub: ExternalId
    name: ShownText = None
    email: Email = None
    email_verified: Verified = None
    picture: PictureUrl = None


class RedditUser(_Answer):
    """``GET /api/v1/me``."""

    id: ExternalId
    name: ShownText = None
    icon_img: Annotated[str | None, PlainValidator(_reddit_icon)] = None


class XUser(_Answer):
    """``data`` of ``GET /2/users/me``."""

    id: ExternalId
    username: ShownText = None
    name: ShownText = None
    profile_image_url: PictureUrl = None


class XUsersMe(_Answer):
    """``GET /2/users/me``."""

    data: XUser


class ProviderToken(_Answer):
    """The token answer, as Authlib hands it over (``expires_at`` computed)."""

    access_token: Annotated[str, PlainValidator(_token_text)]
    token_type: Annotated[str, PlainValidator(_token_type)] = "bearer"
    refresh_token: Annotated[str | None, PlainValidator(_optional_token_text)] = None
    expires_at: Annotated[int | None, PlainValidator(_expires_at)] = None


def read_answer(shape: type[Model], data: Any, what: str) -> Model:
    """``data`` as ``shape``, or ProviderAnswerInvalid naming what is wrong (no values)."""
    try:
        return shape.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'the answer'} {problem['msg']}"
            for problem in error.errors(include_url=False, include_input=False)
        )
        raise ProviderAnswerInvalid(f"{what}: {problems}") from None


# Bluesky (AT Protocol) -----------------------------------------------------------------

#: did:plc and did:web identifiers, as AT Protocol allows them (did:web: a host name,
#: with a port only for local development).
DID_PATTERN = re.compile(r"^did:(plc:[a-z2-7]{24}|web:[a-z0-9.-]{1,253}(%3[aA][0-9]{1,5})?)$")


#: The longest DID kept (the columns that store one are this long).
DID_MAX_CHARS = 255


def _did(value: Any) -> str:
    if not isinstance(value, str) or len(value) > DID_MAX_CHARS or not DID_PATTERN.fullmatch(value):
        raise ValueError("must be a did:plc or did:web identifier of at most 255 characters")
    return value


def http_url(value: Any) -> str:
    """An absolute http(s) URL without credentials, query, fragment or spaces."""
    if not isinstance(value, str) or len(value) > PICTURE_URL_MAX_LENGTH:
        raise ValueError("must be an http(s) URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        raise ValueError("must be an http(s) URL")
    if parts.query or parts.fragment or any(ch.isspace() for ch in value):
        raise ValueError("must be an http(s) URL without query or fragment")
    return value


Did = Annotated[str, PlainValidator(_did)]
HttpUrl = Annotated[str, PlainValidator(http_url)]


class DidService(_Answer):
    """One entry of a DID document's ``service``."""

    id: str
    type: str
    serviceEndpoint: Any = None


class DidDocument(_Answer):
    """A DID document: who the DID says it is (``alsoKnownAs``) and where its PDS is."""

    id: Did
    alsoKnownAs: list[Any] = Field(default_factory=list)
    service: list[DidService] = Field(default_factory=list)


class ProtectedResourceMetadata(_Answer):
    """A PDS's ``/.well-known/oauth-protected-resource``."""

    authorization_servers: list[HttpUrl] = Field(min_length=1)


class AuthorizationServerMetadata(_Answer):
    """An AT Protocol authorization server's metadata (only what the profile needs)."""

    issuer: HttpUrl
    authorization_endpoint: HttpUrl
    token_endpoint: HttpUrl
    pushed_authorization_request_endpoint: HttpUrl
    require_pushed_authorization_requests: StrictBool = False
    authorization_response_iss_parameter_supported: StrictBool = False
    client_id_metadata_document_supported: StrictBool = False
    scopes_supported: list[str] = Field(default_factory=list)
    code_challenge_methods_supported: list[str] = Field(default_factory=list)
    token_endpoint_auth_methods_supported: list[str] = Field(default_factory=list)
    token_endpoint_auth_signing_alg_values_supported: list[str] = Field(default_factory=list)
    dpop_signing_alg_values_supported: list[str] = Field(default_factory=list)


class PushedAuthorizationAnswer(_Answer):
    """The answer of a pushed authorization request."""

    request_uri: Annotated[str, PlainValidator(_token_text)]


def _dpop_token_type(value: Any) -> str:
    if not isinstance(value, str) or value.lower() != "dpop":
        raise ValueError("must be 'DPoP'")
    return value


class BlueskyToken(_Answer):
    """The token answer of an AT Protocol authorization server (DPoP-bound)."""

    access_token: Annotated[str, PlainValidator(_token_text)]
    token_type: Annotated[str, PlainValidator(_dpop_token_type)]
    sub: Did
    scope: Annotated[str, Field(max_length=1024)]
    refresh_token: Annotated[str | None, PlainValidator(_optional_token_text)] = None
    expires_in: Annotated[int | None, Field(gt=0, le=10 * 365 * 86400, strict=True)] = None


class BlueskyProfile(_Answer):
    """``app.bsky.actor.getProfile``."""

    did: Did
    handle: ShownText = None
    displayName: ShownText = None
    avatar: PictureUrl = None

"""Third-party login: the provider table, Authlib's client, each provider's profile shape.

A provider is enabled when API_CLIENT_ID_<PROVIDER> and API_CLIENT_SECRET_<PROVIDER>
are set. Its endpoint URLs come from ``PROVIDERS`` and may be overridden, per
provider, by OAUTH_PROVIDER_URLS (GitHub Enterprise, a test provider).

Every answer from a provider is distrusted: its body is capped while it streams in
(``PROVIDER_MAX_BODY_BYTES``), the caller bounds the whole exchange in time
(OAUTH_PROVIDER_DEADLINE_SECONDS), and what it says is read into typed shapes
(:mod:`app.core.oauth_answers`) before anything uses it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from authlib.integrations.starlette_client import OAuth
from loguru import logger

from app.core.config import Settings
from app.core.oauth_answers import (
    DiscordUser,
    GitHubEmails,
    GitHubUser,
    GoogleUserInfo,
    ProviderAnswerInvalid,
    ProviderToken,
    RedditUser,
    TwitchUsers,
    XUsersMe,
    read_answer,
)

#: The largest body read from a provider (token, profile, keys: a few kB in practice).
PROVIDER_MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ProviderSpec:
    """Where a provider's OAuth 2 endpoints are and what to ask for."""

    authorize_url: str
    access_token_url: str
    api_base_url: str
    scope: str
    userinfo_url: str | None = None
    jwks_uri: str | None = None
    client_kwargs: dict[str, Any] = field(default_factory=dict)


def provider_label(name: str) -> str:
    """A provider's name as its users know it (``github`` -> ``GitHub``)."""
    return {"github": "GitHub", "twitter": "X"}.get(name, name.capitalize())


PROVIDERS: dict[str, ProviderSpec] = {
    "github": ProviderSpec(
        authorize_url="https://github.com/login/oauth/authorize",
        access_token_url="https://github.com/login/oauth/access_token",
        api_base_url="https://api.github.com/",
        scope="read:user user:email",
    ),
    "discord": ProviderSpec(
        authorize_url="https://discord.com/oauth2/authorize",
        access_token_url="https://discord.com/api/oauth2/token",
        api_base_url="https://discord.com/api/",
        scope="identify email",
    ),
    "twitch": ProviderSpec(
        authorize_url="https://id.twitch.tv/oauth2/authorize",
        access_token_url="https://id.twitch.tv/oauth2/token",
        api_base_url="https://api.twitch.tv/helix/",
        scope="user:read:email",
        client_kwargs={"token_endpoint_auth_method": "client_secret_post"},
    ),
    "google": ProviderSpec(
        authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
        access_token_url="https://oauth2.googleapis.com/token",
        api_base_url="https://openidconnect.googleapis.com/v1/",
        userinfo_url="https://openidconnect.googleapis.com/v1/userinfo",
        jwks_uri="https://www.googleapis.com/oauth2/v3/certs",
        scope="openid email profile",
    ),
    "reddit": ProviderSpec(
        authorize_url="https://www.reddit.com/api/v1/authorize",
        access_token_url="https://www.reddit.com/api/v1/access_token",
        api_base_url="https://oauth.reddit.com/",
        scope="identity",
    ),
    "twitter": ProviderSpec(
        authorize_url="https://twitter.com/i/oauth2/authorize",
        access_token_url="https://api.twitter.com/2/oauth2/token",
        api_base_url="https://api.twitter.com/2/",
        scope="users.read tweet.read offline.access",
        client_kwargs={"code_challenge_method": "S256"},
    ),
}


@dataclass(frozen=True)
class ExternalProfile:
    """What a provider tells about its user, in one shape for every provider.

    Built only by :func:`fetch_profile`, from answers read through
    :mod:`app.core.oauth_answers`: the id and email are checked, the shown fields are
    clean text of at most 255 characters (the picture, an http(s) URL), or None.
    """

    provider: str
    external_id: str
    username: str | None
    display_name: str | None
    email: str | None
    email_verified: bool
    picture_url: str | None


def provider_spec(settings: Settings, provider: str) -> ProviderSpec:
    """The provider's URLs, with OAUTH_PROVIDER_URLS' overrides applied."""
    spec = PROVIDERS[provider]
    overrides = settings.OAUTH_PROVIDER_URLS.get(provider, {})
    if not overrides:
        return spec
    values = {**spec.__dict__, **overrides}
    return ProviderSpec(**values)


def enabled_providers(settings: Settings) -> list[str]:
    """The providers with a client id and secret, in table order, then Bluesky when on
    (AT Protocol OAuth, outside Authlib's registry: see :mod:`app.core.atproto_oauth`)."""
    authlib = [name for name in PROVIDERS if settings.oauth_client(name)]
    return authlib + (["bluesky"] if settings.BLUESKY_ENABLED else [])


class ProviderAnswerTooLarge(httpx.HTTPError):
    """A provider's body over PROVIDER_MAX_BODY_BYTES, or compressed although asked not to
    be (decompressed, a small body can become a huge one)."""


class _CappedStream(httpx.AsyncByteStream):
    """A body that fails as soon as more than ``limit`` bytes have arrived."""

    def __init__(self, stream: httpx.AsyncByteStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._stream:
            size += len(chunk)
            if size > self._limit:
                raise ProviderAnswerTooLarge(f"body over {self._limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _ask_for_plain_bodies(request: httpx.Request) -> None:
    request.headers["Accept-Encoding"] = "identity"


async def _cap_body(response: httpx.Response) -> None:
    """Refuse a body announced too large or compressed, and cap the rest as it streams."""
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise ProviderAnswerTooLarge("compressed body")
    length = response.headers.get("Content-Length", "0")
    if not length.isdigit() or int(length) > PROVIDER_MAX_BODY_BYTES:
        raise ProviderAnswerTooLarge(f"body announced over {PROVIDER_MAX_BODY_BYTES} bytes")
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)  # a hook of async clients only
    response.stream = _CappedStream(stream, PROVIDER_MAX_BODY_BYTES)


def create_oauth(settings: Settings) -> OAuth:
    """Authlib's registry with every enabled provider; every request its clients make
    (token, profile, keys) has its body capped."""
    oauth = OAuth()
    for name in (name for name in PROVIDERS if settings.oauth_client(name)):
        client_id, client_secret = settings.oauth_client(name)  # type: ignore[misc]
        spec = provider_spec(settings, name)
        options: dict[str, Any] = {
            "client_id": client_id,
            "client_secret": client_secret,
            "authorize_url": spec.authorize_url,
            "access_token_url": spec.access_token_url,
            "api_base_url": spec.api_base_url,
            "client_kwargs": {
                "scope": spec.scope,
                "timeout": 10,
                "event_hooks": {"request": [_ask_for_plain_bodies], "response": [_cap_body]},
                **spec.client_kwargs,
            },
        }
        if spec.userinfo_url:
            options["userinfo_endpoint"] = spec.userinfo_url
        if spec.jwks_uri:
            options["jwks_uri"] = spec.jwks_uri
        oauth.register(name, **options)
    return oauth


def check_token(token: dict[str, Any]) -> dict[str, Any]:
    """The token answer, once its members are known to be usable (else
    ProviderAnswerInvalid): Authlib and ``oauth_token`` rely on them."""
    read_answer(ProviderToken, dict(token), "token")
    return token


async def fetch_profile(client: Any, provider: str, token: dict[str, Any]) -> ExternalProfile:
    """Ask the provider who signed in, and read its answer in its own shape.

    Raises ProviderAnswerInvalid for an unusable answer, httpx.HTTPError when the
    provider cannot be reached, fails, or sends a body that is too large.
    """

    async def get(path: str, **kwargs: Any) -> Any:
        response = await client.get(path, token=token, **kwargs)
        response.raise_for_status()
        try:
            return response.json()
        except ValueError:
            raise ProviderAnswerInvalid(f"{path}: not JSON") from None

    if provider == "github":
        user = read_answer(GitHubUser, await get("user"), "user")
        emails = read_answer(GitHubEmails, {"emails": await get("user/emails")}, "user/emails")
        primary = next((entry for entry in emails.emails if entry.primary), None)
        return ExternalProfile(
            provider,
            user.id,
            user.login,
            user.name or user.login,
            (primary.email if primary else None) or user.email,
            primary is not None and primary.verified and primary.email is not None,
            user.avatar_url,
        )
    if provider == "discord":
        discord = read_answer(DiscordUser, await get("users/@me"), "users/@me")
        picture = (
            f"https://cdn.discordapp.com/avatars/{quote(discord.id)}/{discord.avatar}.png"
            if discord.avatar
            else None
        )
        return ExternalProfile(
            provider,
            discord.id,
            discord.username,
            discord.global_name or discord.username,
            discord.email,
            bool(discord.verified) and discord.email is not None,
            picture,
        )
    if provider == "twitch":
        answer = await get("users", headers={"Client-Id": client.client_id})
        twitch = read_answer(TwitchUsers, answer, "users").data[0]
        # Twitch only gives an email once the user has verified it.
        return ExternalProfile(
            provider,
            twitch.id,
            twitch.login,
            twitch.display_name,
            twitch.email,
            twitch.email is not None,
            twitch.profile_image_url,
        )
    if provider == "google":
        # The ID token's claims (Authlib checked its signature), else the userinfo endpoint.
        claims = token.get("userinfo") or await get(client.server_metadata["userinfo_endpoint"])
        google = read_answer(GoogleUserInfo, claims, "userinfo")
        return ExternalProfile(
            provider,
            google.sub,
            google.email.split("@")[0] if google.email else None,
            google.name,
            google.email,
            bool(google.email_verified) and google.email is not None,
            google.picture,
        )
    if provider == "reddit":
        reddit = read_answer(RedditUser, await get("api/v1/me"), "api/v1/me")
        return ExternalProfile(
            provider, reddit.id, reddit.name, reddit.name, None, False, reddit.icon_img
        )
    if provider == "twitter":
        answer = await get("users/me", params={"user.fields": "profile_image_url"})
        x = read_answer(XUsersMe, answer, "users/me").data
        return ExternalProfile(provider, x.id, x.username, x.name, None, False, x.profile_image_url)
    raise ValueError(f"unknown provider {provider!r}")


# Provider pictures ---------------------------------------------------------------------

PICTURE_FETCH_MAX_BYTES = 5 * 1024 * 1024
#: The whole download (connection, answer, body) must fit in this time.
PICTURE_FETCH_TIMEOUT_SECONDS = 5


class UnsafeUrl(ValueError):
    """A URL the server must not fetch (not https, or pointing inside our network)."""


def public_addresses(host: str, port: int) -> list[str]:
    """Resolve ``host``: its addresses (IPv4 first) if every one of them is public."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    for ip in addresses:
        if not ip.is_global or ip.is_multicast:
            raise UnsafeUrl(f"{host} resolves to a non-public address")
    return [str(ip) for ip in sorted(addresses, key=lambda ip: (ip.version, int(ip)))]


def check_picture_url(url: str) -> list[str]:
    """Refuse anything but https to a host that resolves to public addresses only.

    Returns the addresses checked: the download must connect to one of them, never
    resolve the name again (the answer could have changed to an inside address).
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise UnsafeUrl("only plain https URLs are fetched")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    if literal is not None and not literal.is_global:
        raise UnsafeUrl("the URL points at a non-public address")
    return public_addresses(parts.hostname, parts.port or 443)


async def fetch_picture(url: str) -> bytes | None:
    """Download a provider's picture: https only, public hosts only, bounded, time-boxed.

    Returns None (and logs why) when the URL is refused or the download fails.
    The bytes still go through the profile-picture validation afterwards.
    """
    try:
        addresses = await asyncio.to_thread(check_picture_url, url)
    except (UnsafeUrl, OSError, UnicodeError, ValueError) as error:
        logger.warning("provider picture not fetched: {}", error)
        return None
    try:
        async with asyncio.timeout(PICTURE_FETCH_TIMEOUT_SECONDS):
            for address in addresses:
                data = await fetch_pinned(url, address)
                if data is not None:
                    return data
    except TimeoutError:
        logger.warning("provider picture not downloaded in {} s", PICTURE_FETCH_TIMEOUT_SECONDS)
    return None


async def fetch_pinned(
    url: str, address: str, *, verify: ssl.SSLContext | bool = True
) -> bytes | None:
    """GET ``url`` from ``address``, without resolving its name again.

    The connection goes to ``address``; TLS still sends the URL's name (SNI) and checks
    the certificate against it, and the Host header carries it. Redirects are not
    followed, proxies from the environment not used (a proxy would resolve the name
    itself). Returns None (and logs why) for anything but a 200 within
    PICTURE_FETCH_MAX_BYTES.
    """
    try:
        target = httpx.URL(url)
        headers = {"Host": target.netloc.decode("ascii"), "Accept-Encoding": "identity"}
        extensions = {"sni_hostname": target.raw_host.decode("ascii")}
        async with (
            httpx.AsyncClient(
                timeout=PICTURE_FETCH_TIMEOUT_SECONDS,
                follow_redirects=False,
                trust_env=False,
                verify=verify,
            ) as http,
            http.stream(
                "GET", target.copy_with(host=address), headers=headers, extensions=extensions
            ) as response,
        ):
            if response.status_code != 200:
                logger.warning("provider picture answered {}", response.status_code)
                return None
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > PICTURE_FETCH_MAX_BYTES:
                    logger.warning(
                        "provider picture over {} bytes: ignored", PICTURE_FETCH_MAX_BYTES
                    )
                    return None
                chunks.append(chunk)
            return b"".join(chunks)
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        logger.warning("provider picture download failed: {}", type(error).__name__)
        return None

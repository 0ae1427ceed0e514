"""The ``user`` table: identity, credentials, 2FA settings and roles (history: ``user_event``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, new_uuid, now_epoch
from app.models.file import user_file

if TYPE_CHECKING:
    from app.models.external_account import ExternalAccount
    from app.models.file import File
    from app.models.oauth_token import OAuthToken
    from app.models.session import Session

USERNAME_MAX_LENGTH = 31
DESCRIPTION_MAX_LENGTH = 256


class User(Base):
    """A local account. ``email`` is stored lower-cased; timestamps are epoch seconds."""

    __tablename__ = "user"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX_LENGTH), unique=True)
    display_name: Mapped[str] = mapped_column(String(USERNAME_MAX_LENGTH))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    # A new email waiting for its confirmation link to be followed; ``email`` stays in
    # force (logins, resets, notices) until then.
    pending_email: Mapped[str | None] = mapped_column(String(320))
    # The email before the last confirmed change, kept for the old address to undo it:
    # nobody else may take it until ``previous_email_until`` (epoch seconds).
    previous_email: Mapped[str | None] = mapped_column(String(320), index=True)
    previous_email_until: Mapped[int | None] = mapped_column(BigInteger)
    hashed_password: Mapped[str | None] = mapped_column(String(255))
    otp_method: Mapped[str] = mapped_column(String(16), default="none")
    otp_secret: Mapped[str | None] = mapped_column(String(64))
    otp_last_timestep: Mapped[int | None] = mapped_column(BigInteger)
    roles: Mapped[list[str]] = mapped_column(JSON, default=lambda: ["user"])
    description: Mapped[str | None] = mapped_column(String(DESCRIPTION_MAX_LENGTH))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch, onupdate=now_epoch)
    is_external_only: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Why the account is inactive: banned, deleting, password_forgot. A password reset
    # reactivates only an account that the forgot-password flow deactivated.
    deactivated_reason: Mapped[str | None] = mapped_column(String(32))
    blocked_uuids: Mapped[list[str]] = mapped_column(JSON, default=list)
    # user -> file -> user is a cycle; the migration adds this key after both tables.
    profile_picture_id: Mapped[int | None] = mapped_column(
        ForeignKey("file.id", ondelete="SET NULL", use_alter=True)
    )

    # A new random value whenever the picture is uploaded or removed: signed picture URLs
    # name it, so a URL handed out earlier never shows a later picture. Null until then.
    picture_version: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        # The listing's order, for pages reached by cursor.
        Index("ix_user_created_at_uuid", "created_at", "uuid"),
        # Prefix search (services.directory). The display name is searched lower-cased:
        # PostgreSQL with LIKE, which needs pattern operators when the collation is not
        # C; SQLite with a range, which any index answers.
        Index(
            "ix_user_display_name_lower",
            func.lower(display_name).label("display_name_lower"),
            postgresql_ops={"display_name_lower": "text_pattern_ops"},
        ),
        # Usernames and emails are stored lower-case; SQLite's range search uses their
        # unique indexes, PostgreSQL's LIKE these.
        Index(
            "ix_user_username_pattern",
            "username",
            postgresql_ops={"username": "varchar_pattern_ops"},
        ).ddl_if(dialect="postgresql"),
        Index(
            "ix_user_email_pattern",
            "email",
            postgresql_ops={"email": "varchar_pattern_ops"},
        ).ddl_if(dialect="postgresql"),
    )

    profile_picture: Mapped[File | None] = relationship(
        foreign_keys=[profile_picture_id], post_update=True, lazy="raise"
    )
    files: Mapped[list[File]] = relationship(
        secondary=user_file, back_populates="users", lazy="raise"
    )
    external_accounts: Mapped[list[ExternalAccount]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )
    oauth_tokens: Mapped[list[OAuthToken]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )
    sessions: Mapped[list[Session]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )

    def __repr__(self) -> str:
        return f"<User {self.uuid} {self.username!r}>"

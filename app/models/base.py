"""Declarative base shared by every table, with stable constraint names."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base class of all models; Alembic autogenerates from its metadata."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def now_epoch() -> int:
    """Current time as integer epoch seconds, the unit of every timestamp column."""
    return int(time.time())


def new_uuid() -> str:
    """A random UUID v4 as a 36-character string."""
    return str(uuid.uuid4())

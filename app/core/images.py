"""Images: validating and re-encoding uploads, sniffing types, drawing initials avatars.

Every function here is synchronous and CPU-bound; callers run it in a worker thread
(``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

#: Formats a profile picture may be, by Pillow's name, with the extension we store.
PICTURE_FORMATS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp"}
#: Extensions a profile-picture upload may carry.
PICTURE_EXTENSIONS = {"png", "jpg", "jpeg", "gif", "bmp"}
PICTURE_MAX_SIDE = 512
#: Largest picture decoded (checked from the header, before any pixel is decoded).
PICTURE_MAX_PIXELS = 25_000_000
AVATAR_SIZE = 256
AVATAR_BACKGROUND = (128, 128, 128)
AVATAR_FOREGROUND = (255, 255, 255)

MIME_BY_FORMAT = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
}
#: Image types safe to show inline; anything else is served as an attachment.
INLINE_TYPES = frozenset(MIME_BY_FORMAT.values())

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"%PDF-", "application/pdf"),
)


class InvalidImage(ValueError):
    """The upload is not an acceptable picture; the message says why."""


def sniff_image_type(head: bytes) -> str | None:
    """The image (or PDF) type that the first bytes of a file reveal, or None."""
    for signature, mime in _SIGNATURES:
        if head.startswith(signature):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class Picture:
    """A validated, re-encoded picture."""

    data: bytes
    extension: str
    mime: str
    width: int
    height: int


def process_picture(data: bytes, declared_extension: str) -> Picture:
    """Validate and re-encode a profile picture; fit it in 512x512, keeping its aspect.

    Only PNG, JPEG, GIF and BMP are decoded (Pillow's format allowlist), the pixel
    count is checked from the header before decoding, and the output is a fresh
    encoding: anything appended to or hidden in the upload is dropped. An animated
    GIF keeps its first frame.

    Raises
    ------
    InvalidImage
        With a reason fit for the client.
    """
    if declared_extension.lower() not in PICTURE_EXTENSIONS:
        raise InvalidImage("profile pictures must be .png, .jpg, .jpeg, .gif or .bmp files")
    try:
        image = Image.open(io.BytesIO(data), formats=list(PICTURE_FORMATS))
    except UnidentifiedImageError:
        raise InvalidImage("the file is not a PNG, JPEG, GIF or BMP image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidImage(f"the image cannot be read: {error}") from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > PICTURE_MAX_PIXELS:
        raise InvalidImage(
            f"the image is {width}x{height}; at most {PICTURE_MAX_PIXELS} pixels are accepted"
        )
    image_format = image.format or ""
    try:
        image.seek(0)
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise InvalidImage(f"the image is damaged: {error}") from None
    extension = PICTURE_FORMATS[image_format]
    frame = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P", "PA") else "RGB")
    frame.thumbnail((PICTURE_MAX_SIDE, PICTURE_MAX_SIDE), Image.Resampling.LANCZOS)
    if extension in ("jpg", "bmp") and frame.mode == "RGBA":
        background = Image.new("RGB", frame.size, (255, 255, 255))
        background.paste(frame, mask=frame.getchannel("A"))
        frame = background
    output = io.BytesIO()
    save_format = "JPEG" if extension == "jpg" else image_format
    options = {"quality": 90} if save_format == "JPEG" else {}
    if save_format == "GIF":
        frame = frame.convert("P", palette=Image.Palette.ADAPTIVE)
    frame.save(output, format=save_format, **options)
    return Picture(
        data=output.getvalue(),
        extension=extension,
        mime=MIME_BY_FORMAT[image_format],
        width=frame.width,
        height=frame.height,
    )


def initials(display_name: str) -> str:
    """Up to two initials: "John Doe" -> "JD", "alice_bob" -> "AB", "zed" -> "Z"."""
    words = [word for word in re.split(r"[\s_]+", display_name) if word]
    letters = [word[0] for word in words if word[0].isalnum()][:2]
    return "".join(letters).upper() or "?"


def render_avatar(text: str, size: int = AVATAR_SIZE) -> bytes:
    """A gray square PNG with ``text`` centred in white (Pillow's bundled font)."""
    image = Image.new("RGB", (size, size), AVATAR_BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=int(size * 0.42))
    draw.text((size / 2, size / 2), text, fill=AVATAR_FOREGROUND, font=font, anchor="mm")
    output = io.BytesIO()
    image.save(output, format="PNG", optimize=True)
    return output.getvalue()

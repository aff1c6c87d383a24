"""multipart/form-data bodies of /images/edits, parsed with the stdlib `email` parser.

(`cgi` is gone from Python 3.13; `email` reads MIME, which is what multipart/form-data is.)
"""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

from .validation import InvalidRequest, Upload


def parse(content_type: str, body: bytes) -> tuple[dict[str, str], list[Upload]]:
    """(text fields, file parts); a file part is one that has a filename or is image/mask."""
    if (
        not content_type.lower().startswith("multipart/form-data")
        or "boundary=" not in content_type
    ):
        raise InvalidRequest(
            "Edits take multipart/form-data with a boundary.", None, "invalid_request"
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise InvalidRequest("Malformed multipart body.", None, "invalid_request")
    fields: dict[str, str] = {}
    uploads: list[Upload] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        filename = part.get_filename()
        data = part.get_payload(decode=True) or b""
        if filename is not None or name in ("image", "image[]", "mask"):
            uploads.append(Upload(name, filename, part.get_content_type(), data))
        else:
            charset = part.get_content_charset() or "utf-8"
            fields[name] = data.decode(charset, errors="replace")
    return fields, uploads

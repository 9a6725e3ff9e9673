"""The few fields the gateway reads of a multipart form (the audio routes: `model`, `stream`);
the form itself, audio file included, goes to the worker byte for byte."""

from __future__ import annotations

import re

from .errors import bad_request

_BOUNDARY = re.compile(rb'boundary="?([^";]{1,200})"?', re.IGNORECASE)
_NAME = re.compile(rb'content-disposition:[^\r\n]*\bname="([^"]{1,200})"', re.IGNORECASE)
_WANTED = (b"model", b"stream")
_MAX_VALUE = 4096  # a text field longer than this is not a model name or a flag


def form_fields(raw: bytes, content_type: bytes) -> dict[str, str]:
    """The text fields `model` and `stream` of a multipart/form-data body (absent ones left out)."""
    if not content_type.lower().startswith(b"multipart/form-data"):
        raise bad_request("this route takes a multipart/form-data body", code="invalid_content_type")
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise bad_request("the multipart/form-data content type has no boundary", code="invalid_content_type")
    delimiter = b"--" + found.group(1)
    fields: dict[str, str] = {}
    for part in raw.split(delimiter)[1:]:
        head, sep, value = part.partition(b"\r\n\r\n")
        name = _NAME.search(head)
        if not sep or name is None or name.group(1) not in _WANTED or b"filename=" in head.lower():
            continue
        value = value.removesuffix(b"\r\n")
        if len(value) > _MAX_VALUE:
            raise bad_request(f"form field '{name.group(1).decode()}' is too long", name.group(1).decode())
        fields[name.group(1).decode()] = value.decode("utf-8", errors="replace")
    return fields

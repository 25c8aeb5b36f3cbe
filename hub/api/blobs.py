"""A stored blob as an HTTP response, with the Range semantics of Starlette's FileResponse, streamed in chunks.

Used for storage backends that keep no local files (PostgreSQL large objects); the directory backend is served by
FileResponse itself. Same answers: 200 with Content-Length, Last-Modified, ETag and Accept-Ranges; one range ->
206 with Content-Range; several -> 206 multipart/byteranges (overlaps merged); a start past the end -> 416 with
`Content-Range: bytes */<size>`; a malformed header -> 400; an If-Range that matches neither the ETag nor
Last-Modified -> the whole blob (200). The body is read one chunk at a time in a worker thread, so a 500 MB
artifact never sits in memory, and a client that goes away stops the reading (StreamingResponse's disconnect
watch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from email.utils import formatdate
from secrets import token_hex

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from hub.storage import OpenBlob

MAX_RANGES = 100  # more than this and the Range header is ignored (as FileResponse does)


class MalformedRange(ValueError):
    """A Range header that cannot be parsed (400)."""


class UnsatisfiableRange(ValueError):
    """A Range that starts past the end of the blob (416)."""


def blob_response(blob: OpenBlob, request_headers: Headers, *, media_type: str,
                  headers: Mapping[str, str]) -> Response:  # fmt: skip
    """The response for a GET of `blob` (which it closes once sent, or now if nothing of it is sent)."""
    info = blob.info
    out = {k.lower(): v for k, v in headers.items()}
    out.setdefault("accept-ranges", "bytes")
    out.setdefault("last-modified", formatdate(info.modified.timestamp(), usegmt=True))
    if info.sha256 is not None:
        out.setdefault("etag", f'"{info.sha256}"')
    else:
        base = f"{info.modified.timestamp()}-{info.size}"
        out.setdefault("etag", f'"{hashlib.md5(base.encode(), usedforsecurity=False).hexdigest()}"')
    http_range = request_headers.get("range")
    if_range = request_headers.get("if-range")
    if http_range is None or (if_range is not None and not _if_range_holds(if_range, out)):
        return _stream(blob, [(0, info.size)], 200, out | {"content-length": str(info.size)}, media_type)
    try:
        ranges = parse_range(http_range, info.size)
    except MalformedRange as e:
        blob.close()
        return PlainTextResponse(str(e), status_code=400)
    except UnsatisfiableRange:
        blob.close()
        return PlainTextResponse("", status_code=416, headers={"Content-Range": f"bytes */{info.size}"})
    if not ranges:
        return _stream(blob, [(0, info.size)], 200, out | {"content-length": str(info.size)}, media_type)
    if len(ranges) == 1:
        start, end = ranges[0]
        single = out | {"content-range": f"bytes {start}-{end - 1}/{info.size}", "content-length": str(end - start)}
        return _stream(blob, ranges, 206, single, media_type)
    return _multipart(blob, ranges, out, media_type)


def _if_range_holds(if_range: str, headers: Mapping[str, str]) -> bool:
    return not if_range.startswith("W/") and if_range in (headers["etag"], headers["last-modified"])


def parse_range(http_range: str, size: int) -> list[tuple[int, int]]:
    """[start, end) pairs for a `bytes=` Range header ([] means: ignore it), merged and sorted if several."""
    units, sep, spec = http_range.partition("=")
    if not sep:
        raise MalformedRange("Malformed range header.")
    if units.strip().lower() != "bytes":
        raise MalformedRange("Only support bytes range")
    if spec.count(",") + 1 > MAX_RANGES:
        return []
    ranges: list[tuple[int, int]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part or part == "-" or "-" not in part:
            continue
        first, _, last = (x.strip() for x in part.partition("-"))
        try:
            start = int(first) if first else max(size - int(last), 0)
            end = int(last) + 1 if first and last and int(last) < size else size
        except ValueError:
            continue
        ranges.append((start, end))
    if not ranges:
        raise MalformedRange("Range header: range must be requested")
    if any(not 0 <= start < size for start, _ in ranges):
        raise UnsatisfiableRange(size)
    if any(start >= end for start, end in ranges):
        raise MalformedRange("Range header: start must be less than end")
    if len(ranges) == 1:
        return ranges
    ranges.sort()
    merged = [ranges[0]]
    for start, end in ranges[1:]:
        if start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _body(blob: OpenBlob, parts: list[tuple[bytes, int, int]], tail: bytes = b"") -> Iterator[bytes]:
    """For each (prefix, start, end): the prefix, then the blob's bytes [start, end); then `tail`. Closes the blob."""
    try:
        for prefix, start, end in parts:
            if prefix:
                yield prefix
            yield from blob.chunks(start, end)
        if tail:
            yield tail
    finally:
        blob.close()


def _stream(blob: OpenBlob, ranges: list[tuple[int, int]], status: int, headers: dict[str, str],
            media_type: str) -> StreamingResponse:  # fmt: skip
    body = _body(blob, [(b"", start, end) for start, end in ranges])
    return StreamingResponse(body, status_code=status, headers=headers, media_type=media_type)


def _multipart(blob: OpenBlob, ranges: list[tuple[int, int]], headers: dict[str, str],
               media_type: str) -> StreamingResponse:  # fmt: skip
    boundary = token_hex(13)
    size = blob.info.size
    parts = []
    for i, (start, end) in enumerate(ranges):
        lead = "" if i == 0 else "\r\n"
        head = (f"{lead}--{boundary}\r\nContent-Type: {media_type}\r\n"
                f"Content-Range: bytes {start}-{end - 1}/{size}\r\n\r\n").encode("latin-1")  # fmt: skip
        parts.append((head, start, end))
    tail = f"\r\n--{boundary}--".encode("latin-1")
    length = sum(len(head) + end - start for head, start, end in parts) + len(tail)
    out = headers | {"content-length": str(length)}
    multipart = f"multipart/byteranges; boundary={boundary}"
    return StreamingResponse(_body(blob, parts, tail), status_code=206, headers=out, media_type=multipart)

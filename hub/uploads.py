"""A model push streamed straight to the data dir: multipart parts to files, the size cap enforced as bytes arrive.

Starlette's form parser spools file parts to the system's temp dir before the route runs; a push may be
hundreds of MB, so the hub parses the multipart body itself (python-multipart's streaming parser, the one
Starlette uses) and writes each part where it will be checked and published, under the data dir. Parts:
`archive` (one .tar[.gz] of the converter's output folder) or `files` (each named by its relative path)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from hub.errors import InvalidInput
from hub.registry import MAX_MEMBERS, safe_relative

PUSH_DIR_PREFIX = "edgefleet-push-"  # temp folders under the data dir; start-up removes any a crash left
MAX_PART_HEADER_BYTES = 8 * 1024


@dataclass
class ReceivedPush:
    """Where the parts went: `archive` (a tar file) or files under `folder`."""

    folder: Path
    archive: Path | None = None
    files: list[Path] = field(default_factory=list)


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    out: IO[bytes] | None = None


class _PushParser:
    """python-multipart callbacks writing `archive` / `files` parts under `tmp`, counting every byte."""

    def __init__(self, tmp: Path, max_bytes: int) -> None:
        self.result = ReceivedPush(folder=tmp / "upload")
        self.result.folder.mkdir()
        self._tmp, self._left = tmp, max_bytes
        self._part = _Part()
        self._name, self._value = b"", b""

    def on_part_begin(self) -> None:
        self._part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]
        self._check_header_size()

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._check_header_size()

    def _check_header_size(self) -> None:
        if len(self._name) + len(self._value) > MAX_PART_HEADER_BYTES:
            raise InvalidInput(f"a multipart part header is over {MAX_PART_HEADER_BYTES} bytes")

    def on_header_end(self) -> None:
        self._part.headers[self._name.lower()] = self._value
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._part.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename", b"").decode("utf-8", "replace")
        if name == "archive":
            if self.result.archive is not None:
                raise InvalidInput("send one `archive` part")
            self.result.archive = self._tmp / "upload.tar"
            self._part.out = self.result.archive.open("wb")
        elif name == "files":
            if len(self.result.files) >= MAX_MEMBERS:
                raise InvalidInput(f"more than {MAX_MEMBERS} files")
            path = self.result.folder / safe_relative(filename)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.result.files.append(path)
            self._part.out = path.open("wb")
        else:
            raise InvalidInput(f"unexpected form field {name!r}: send `archive` or `files`")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._left -= end - start
        if self._left < 0:
            raise InvalidInput("upload too large")
        assert self._part.out is not None
        self._part.out.write(data[start:end])

    def on_part_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._part.out is not None:
            self._part.out.close()
            self._part.out = None


async def receive_push(
    content_type: str | None, chunks: AsyncIterator[bytes], tmp: Path, *, max_bytes: int
) -> ReceivedPush:
    """Parse a multipart push into `tmp` (a fresh directory); InvalidInput for anything else."""
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidInput("send the folder as multipart/form-data: `archive` (a .tar.gz) or `files`")
    target = _PushParser(tmp, max_bytes)
    callbacks = {name: getattr(target, name) for name in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value", "on_header_end",
        "on_headers_finished")}  # fmt: skip
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise InvalidInput(f"malformed multipart body: {e}") from e
    finally:
        target.close()
    result = target.result
    if (result.archive is None) == (not result.files):
        raise InvalidInput("send either `archive` (a .tar.gz of the folder) or `files`, not both or neither")
    return result

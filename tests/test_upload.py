"""The multipart upload body (ipfs/upload.py) against a server that answers before it reads.

kubo and js-ipfs send `200` for `/api/v0/add` at once and read the upload while they stream
their answer. aiohttp closes a FormData body's files when that answer starts, which hung
`publish --to kubo` on a loaded machine; these tests pin the behaviour that replaced it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import hdrs, web
from aiohttp.test_utils import TestServer

from modelfetch.errors import StorageError
from modelfetch.ipfs.upload import MultipartUpload, Part


async def _answer_first(request: web.Request) -> web.StreamResponse:
    """Headers out before a byte of the body is read; then one NDJSON line per part."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await asyncio.sleep(0.2)  # the client is mid-upload now, with the answer started
    reader = await request.multipart()
    async for part in reader:
        assert isinstance(part, aiohttp.BodyPartReader)
        digest, size = hashlib.sha256(), 0
        while chunk := await part.read_chunk(1 << 16):
            digest.update(chunk)
            size += len(chunk)
        line = {
            "disposition": part.headers[hdrs.CONTENT_DISPOSITION],
            "type": part.headers[hdrs.CONTENT_TYPE],
            "size": size,
            "sha256": digest.hexdigest(),
        }
        await resp.write(json.dumps(line).encode() + b"\n")
    await resp.write_eof()
    return resp


@pytest.fixture
async def early_server() -> AsyncIterator[str]:
    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/add", _answer_first)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/add"))
    finally:
        await server.close()


def _files(tmp_path: Path) -> dict[str, bytes]:
    rng = random.Random(7)
    files = {
        "config.json": b'{"a": 1}\n',
        "onnx/model.onnx": rng.randbytes(6 << 20),  # far more than the socket buffers hold
        "tokenizer.json": rng.randbytes(300_000),
    }
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    return files


async def _post(url: str, body: MultipartUpload) -> list[dict[str, object]]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=20)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, data=body) as resp,
    ):
        assert resp.status == 200
        return [json.loads(line) async for line in resp.content if line.strip()]


async def test_every_byte_arrives_although_the_answer_starts_first(
    tmp_path: Path, early_server: str
) -> None:
    files = _files(tmp_path)
    parts = [
        Part("file", "application/octet-stream", rel, tmp_path / rel, len(data))
        for rel, data in files.items()
    ]
    parts.append(Part("meta", "application/json", data=b'{"k": "v"}'))
    body = MultipartUpload(parts)
    for _ in range(3):  # a fresh connection each time: the race is per request
        lines = await _post(early_server, body)
        assert [(x["size"], x["sha256"]) for x in lines[:3]] == [
            (len(d), hashlib.sha256(d).hexdigest()) for d in files.values()
        ]
        assert 'filename="onnx%2Fmodel.onnx"' in str(lines[1]["disposition"])
        assert lines[3]["type"] == "application/json" and lines[3]["size"] == 10
        assert body.error is None


async def test_raw_file_names_for_services_that_want_them(
    tmp_path: Path, early_server: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.txt").write_bytes(b"x")
    body = MultipartUpload(
        [Part("file", "text/plain", "m/a/b.txt", tmp_path / "a" / "b.txt", 1)],
        quote_filenames=False,
    )
    [line] = await _post(early_server, body)
    assert line["disposition"] == 'form-data; name="file"; filename="m/a/b.txt"'
    assert body.size == len(
        b'--%s\r\nContent-Disposition: form-data; name="file"; filename="m/a/b.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nx\r\n--%s--\r\n"
        % (body.boundary.encode(), body.boundary.encode())
    )


async def test_a_file_that_shrank_fails_at_once_and_says_so(
    tmp_path: Path, early_server: str
) -> None:
    files = _files(tmp_path)
    rel = "onnx/model.onnx"
    promised = len(files[rel])
    (tmp_path / rel).write_bytes(files[rel][: promised // 2])  # changed after it was checked
    body = MultipartUpload(
        [Part("file", "application/octet-stream", rel, tmp_path / rel, promised)]
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(aiohttp.ClientError):
        await _post(early_server, body)
    assert loop.time() - started < 10, "a short body must drop the connection, not stall"
    assert isinstance(body.error, StorageError)
    assert "shrank during the upload" in str(body.error)

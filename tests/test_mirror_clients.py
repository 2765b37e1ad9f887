"""The mirror seen by other machines: modelfetch through `[huggingface] mirrors`, auth and
gated repos, catalog models, resuming by Range, tree pages, figures."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from conftest import fast_settings
from mirror_support import (
    FILES,
    REPO,
    WEIGHTS,
    Running,
    download,
    mirror_settings,
    serving,
    snapshot,
)
from modelfetch.catalog import HuggingFaceRef, ModelSpec
from modelfetch.cli import main
from modelfetch.config import Settings
from modelfetch.engine import Fetcher
from modelfetch.errors import ConfigError
from modelfetch.events import AttemptEvent, Event
from modelfetch.server import create_app
from modelfetch.server.app import check_bind
from modelfetch.server.mirror import routes
from modelfetch.testing import HubServer, unused_url

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import errors as hf_errors  # noqa: E402

pytest_plugins = ["conftest_mirror"]  # upstream, mirror (tests/conftest_mirror.py)

SPEC = ModelSpec(name="bert", dir="org/bert", files=tuple(FILES), huggingface=HuggingFaceRef(REPO))


def machine(
    tmp_path: Path, upstream: HubServer, name: str, mirrors: tuple[str, ...] = ()
) -> Settings:
    settings = fast_settings(tmp_path / name / "models", upstream.url, [])
    hf_settings = replace(settings.huggingface, mirrors=mirrors, cache_dir=tmp_path / name / "hf")
    return replace(settings, huggingface=hf_settings, models={**settings.models, "bert": SPEC})


# -- a second modelfetch, through [huggingface] mirrors --------------------------------------------


async def test_second_machine_pulls_through_the_mirror(
    mirror: Running, upstream: HubServer, tmp_path: Path
) -> None:
    settings = machine(tmp_path, upstream, "b", mirrors=(mirror.url,))
    async with Fetcher(settings, records=False) as fetcher:
        (result,) = await fetcher.pull(["bert"])
    assert result.ok, result.errors
    for f in result.files:
        assert f.local_path.read_bytes() == FILES[f.path]
        assert f.gateway == mirror.url  # every byte came from the mirror
    for path, data in FILES.items():  # and the upstream sent each file once, to the mirror
        assert upstream.bytes_sent(hashlib.sha256(data).hexdigest()) == len(data), path


async def test_a_mirror_that_is_down_costs_one_refused_connection(
    upstream: HubServer, tmp_path: Path
) -> None:
    dead = unused_url()
    events: list[Event] = []
    settings = machine(tmp_path, upstream, "b", mirrors=(dead,))
    async with Fetcher(settings, records=False, listeners=[events.append]) as fetcher:
        (result,) = await fetcher.pull(["bert"])
    assert result.ok, result.errors
    assert all(f.gateway == upstream.url for f in result.files)
    tried = [e for e in events if isinstance(e, AttemptEvent) and e.gateway == dead]
    failures = [e for e in tried if e.status == "error"]
    # refused at most once per file (files start together; once it is known to be down, no
    # file of the run asks it again), and never retried
    assert 1 <= len(failures) <= len(FILES)
    assert {e.error_type for e in failures} == {"ConnectFailed"}


# -- catalog models: the models dir of the mirror ----------------------------------------------


async def test_a_catalog_model_is_served_from_the_models_dir(
    upstream: HubServer, tmp_path: Path
) -> None:
    settings = replace(mirror_settings(tmp_path, upstream), models={"bert": SPEC})
    async with Fetcher(settings, records=False) as fetcher:
        (pulled,) = await fetcher.pull(["bert"])
    assert pulled.ok
    upstream.reset_counters()
    async with serving(settings) as running:
        for path, data in FILES.items():
            got = await download(running.url, tmp_path / "client", path)
            assert got.read_bytes() == data
    assert upstream.requests_in("resolve") == [] and upstream.requests_in("cdn") == []  # API only


async def test_a_catalog_dataset_with_a_subdir(upstream: HubServer, tmp_path: Path) -> None:
    voice = hashlib.sha256(b"voice").digest() * 1000
    upstream.add_file("org/corpus", "tts/voice.bin", voice, repo_type="dataset")
    ref = HuggingFaceRef("org/corpus", type="dataset", subdir="tts")
    spec = ModelSpec(name="voices", dir="voices", files=("voice.bin",), huggingface=ref)
    settings = replace(mirror_settings(tmp_path, upstream), models={"voices": spec})
    async with Fetcher(settings, records=False) as fetcher:
        (pulled,) = await fetcher.pull(["voices"])
    assert pulled.ok and (settings.models_dir / "voices" / "voice.bin").is_file()
    upstream.reset_counters()
    async with serving(settings) as running:
        got = await download(
            running.url, tmp_path / "c", "tts/voice.bin", repo_id="org/corpus", repo_type="dataset"
        )
    assert got.read_bytes() == voice
    assert upstream.requests_in("resolve") == [] and upstream.requests_in("cdn") == []


async def test_a_tampered_catalog_file_is_not_served(upstream: HubServer, tmp_path: Path) -> None:
    settings = replace(mirror_settings(tmp_path, upstream), models={"bert": SPEC})
    async with Fetcher(settings, records=False) as fetcher:
        await fetcher.pull(["bert"])
    final = settings.models_dir / "org/bert/model.safetensors"
    final.write_bytes(b"x" + WEIGHTS[1:])
    upstream.reset_counters()
    async with serving(settings) as running:
        got = await download(running.url, tmp_path / "client", "model.safetensors")
        assert got.read_bytes() == WEIGHTS  # pulled through instead
    assert upstream.bytes_sent(hashlib.sha256(WEIGHTS).hexdigest()) == len(WEIGHTS)


# -- resuming a cut download by Range --------------------------------------------------------------


class CuttingProxy:
    """A TCP proxy that cuts its first connection after `cut` bytes from the server."""

    def __init__(self, target_port: int, cut: int) -> None:
        self.target_port = target_port
        self.cut = cut
        self.cut_done = False
        self.sent_to_server = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        cutting = not self.cut_done
        self.cut_done = True

        async def pipe_up() -> None:
            while data := await reader.read(65536):
                self.sent_to_server += data
                up_w.write(data)
                await up_w.drain()

        async def pipe_down() -> None:
            sent = 0
            while data := await up_r.read(65536):
                if cutting and sent + len(data) > self.cut:
                    writer.write(data[: self.cut - sent])
                    await writer.drain()
                    return
                sent += len(data)
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(pipe_up()), asyncio.ensure_future(pipe_down())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        writer.close()
        up_w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def proxy(mirror: Running) -> AsyncIterator[CuttingProxy]:
    port = int(mirror.url.rsplit(":", 1)[1])
    p = CuttingProxy(port, cut=11 << 20)
    yield p
    await p.close()


async def test_hf_hub_download_resumes_a_cut_download_by_range(
    mirror: Running, upstream: HubServer, proxy: CuttingProxy, tmp_path: Path
) -> None:
    # huggingface_hub reads 10 MiB chunks: only a cut after the first one leaves it something
    # to resume from (a cut before restarts from zero)
    big = hashlib.sha256(b"big").digest() * (12 << 15)  # 12 MiB
    upstream.add_file(REPO, "big.bin", big)
    await download(upstream.url, mirror.cache, "big.bin")
    url = await proxy.start()
    got = await download(url, tmp_path / "client", "big.bin")
    assert got.read_bytes() == big
    asked = bytes(proxy.sent_to_server).lower()
    assert asked.count(b"get /org/bert/resolve/main/big.bin") == 2
    assert b"range: bytes=10485760-" in asked  # it resumed where the first chunk ended


# -- tree pages, as the hub pages them ------------------------------------------------------------


async def test_tree_pages_follow_the_link_header(
    mirror: Running, upstream: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes, "TREE_PAGE", 2)
    commit = upstream.commit(REPO)
    async with aiohttp.ClientSession() as http:
        url = f"{mirror.url}/api/models/{REPO}/tree/{commit}?recursive=true"
        async with http.get(url) as resp:
            assert resp.status == 200
            assert len(await resp.json()) == 2 and 'rel="next"' in resp.headers["Link"]
    api = hf.HfApi(endpoint=mirror.url)
    listed = await asyncio.to_thread(lambda: list(api.list_repo_tree(REPO, recursive=True)))
    assert {e.path for e in listed} == {*FILES, "onnx"}
    snap = await snapshot(mirror.url, tmp_path / "client")
    assert all((snap / p).read_bytes() == d for p, d in FILES.items())


# -- a file still arriving -------------------------------------------------------------------------


async def test_a_client_is_told_to_come_back_while_a_big_file_arrives(
    upstream: HubServer, tmp_path: Path
) -> None:
    async with serving(mirror_settings(tmp_path, upstream), hold=0) as running:
        url = f"{running.url}/{REPO}/resolve/main/model.safetensors"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                assert resp.status == 429 and resp.headers["Retry-After"].isdigit()
            for task in list(running.mirror.pulls._flights._tasks.values()):
                await task
            async with http.get(url) as resp:
                assert resp.status == 200 and await resp.read() == WEIGHTS


# -- auth ----------------------------------------------------------------------------------------


def test_bind_rules() -> None:
    with pytest.raises(ConfigError):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", None, open_reads=True)  # a LAN mirror of public models
    check_bind("0.0.0.0", "secret")


def test_open_reads_needs_the_mirror(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "m", unused_url(), [])
    with pytest.raises(ConfigError):
        create_app(settings, open_reads=True)
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--open-reads", "--dir", str(tmp_path / "m")])
    assert result.exit_code == 2 and "--mirror" in result.output
    result = runner.invoke(main, ["serve", "--mirror", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "token" in result.output


async def test_with_a_token_every_route_needs_it(upstream: HubServer, tmp_path: Path) -> None:
    await snapshot(upstream.url, tmp_path / "mirror" / "hf")
    async with serving(mirror_settings(tmp_path, upstream), token="mirror-secret") as running:
        url = f"{running.url}/{REPO}/resolve/main/config.json"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                assert resp.status == 401
            auth = {"Authorization": "Bearer mirror-secret"}
            async with http.get(url, headers=auth) as resp:
                assert resp.status == 200
        got = await download(running.url, tmp_path / "c", "config.json", token="mirror-secret")
        assert got.read_bytes() == FILES["config.json"]


async def test_open_reads_opens_the_read_routes_only(upstream: HubServer, tmp_path: Path) -> None:
    await snapshot(upstream.url, tmp_path / "mirror" / "hf")
    settings = mirror_settings(tmp_path, upstream)
    async with serving(settings, token="mirror-secret", open_reads=True) as running:
        got = await download(running.url, tmp_path / "c", "config.json")  # no token
        assert got.read_bytes() == FILES["config.json"]
        async with aiohttp.ClientSession() as http:
            for method, path in (
                ("GET", "/gm/api/models"),
                ("GET", "/gm/api/mirror"),
                ("GET", "/metrics"),
                ("POST", "/gm/api/models/bert/download"),
            ):
                async with http.request(method, running.url + path) as resp:
                    assert resp.status == 401, path
    async with serving(settings, open_reads=True) as running:  # no token at all
        lan = {"Host": "192.168.1.20:8765"}  # what a LAN client sends
        async with aiohttp.ClientSession() as http:
            url = f"{running.url}/{REPO}/resolve/main/config.json"
            async with http.get(url, headers=lan) as resp:
                assert resp.status == 200
            async with http.get(running.url + "/gm/api/models", headers=lan) as resp:
                assert resp.status == 403


@pytest.mark.parametrize("how", ["gated", "private"])
async def test_restricted_repos_need_the_mirrors_token_and_upstreams_stays_hidden(
    upstream: HubServer, tmp_path: Path, how: str
) -> None:
    upstream_token = "hf_upstream_secret_123"
    if how == "gated":
        upstream.set_gated(REPO, upstream_token)
    else:
        upstream.set_private(REPO, upstream_token)
    settings = mirror_settings(tmp_path, upstream)
    settings = replace(settings, huggingface=replace(settings.huggingface, token=upstream_token))
    seen: list[bytes] = []
    async with serving(settings, token="mirror-secret", open_reads=True) as running:
        with pytest.raises((hf_errors.GatedRepoError, hf_errors.RepositoryNotFoundError)):
            await download(running.url, tmp_path / "anon", "config.json")
        got = await download(
            running.url, tmp_path / "ok", "model.safetensors", token="mirror-secret"
        )
        assert got.read_bytes() == WEIGHTS
        async with aiohttp.ClientSession() as http:
            for path in (
                f"/{REPO}/resolve/main/config.json",
                f"/api/models/{REPO}/revision/main",
                f"/{REPO}/resolve/main/missing.bin",
                f"/api/models/{REPO}/tree/main",
            ):
                for headers in ({}, {"Authorization": "Bearer mirror-secret"}):
                    async with http.get(running.url + path, headers=headers) as resp:
                        seen.append(str(resp.headers).encode() + await resp.read())
    assert not any(upstream_token.encode() in s for s in seen)


# -- figures --------------------------------------------------------------------------------------


async def test_metrics_and_figures_show_the_mirror(
    mirror: Running, upstream: HubServer, tmp_path: Path
) -> None:
    await download(mirror.url, tmp_path / "a", "config.json")  # a miss: pulled through
    await download(mirror.url, tmp_path / "b", "config.json")  # a hit
    async with aiohttp.ClientSession() as http:
        async with http.get(mirror.url + "/gm/api/mirror") as resp:
            figures = await resp.json()
        async with http.get(mirror.url + "/metrics") as resp:
            text = await resp.text()
    assert figures["hits"] == 1 and figures["misses"] == 1 and figures["hit_ratio"] == 0.5
    assert figures["bytes_served"] == 2 * len(FILES["config.json"])
    assert figures["pulls_in_flight"] == 0 and figures["clients"] == 1
    assert figures["pulls"] == 1
    assert 'modelfetch_mirror_requests_total{outcome="hit",route="resolve"} 1.0' in text
    assert "modelfetch_mirror_hit_ratio 0.5" in text
    assert f"modelfetch_mirror_bytes_served_total {2 * len(FILES['config.json'])}.0" in text
    assert "modelfetch_mirror_pulls_in_flight 0.0" in text

"""The dashboard (GET /gm/) in Debian's Chromium, driven by Playwright, against a real
`modelfetch serve` pulling from loopback origins: live progress, health, Retry, restart,
keyboard and token. Screenshots go to artifacts/ at the repository root.

Without chromium or Python Playwright these tests skip, except under CI (env `CI` set),
where they fail: CI installs both (scripts/test.sh).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from conftest import CID, REPO, model_files
from modelfetch.manifest import FileEntry
from modelfetch.store import Store
from modelfetch.testing import GatewayServer, HubServer, faults

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, Request

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
MODEL = "my-model"
# A model whose name and file are markup: the page must show them as text, never run them.
HOSTILE = '<img src=x onerror="window.__xss = 1">'
HOSTILE_FILE = "<script>window.__xss = 2</script>.bin"
ONNX = "onnx/model.onnx"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP_WIDTH, LAPTOP_HEIGHT = 1366, 860


# -- the browser ---------------------------------------------------------------------------


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "Python Playwright is not installed (pip install -e '.[test]')"
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{missing}: CI must run the dashboard tests", pytrace=False)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@contextlib.contextmanager
def opened(browser: Browser, url: str, name: str) -> Iterator[Page]:
    """A page on `url`; uncaught script errors fail the test, a failure leaves a screenshot."""
    context = browser.new_context(viewport={"width": LAPTOP_WIDTH, "height": LAPTOP_HEIGHT})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def note_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:  # blocked by the page's own CSP
            errors.append(message.text)

    page.on("console", note_console)
    outside: list[str] = []

    def note_request(request: Request) -> None:
        if not request.url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:")):
            outside.append(request.url)

    page.on("request", note_request)
    try:
        page.goto(url)
        yield page
    except BaseException:
        with contextlib.suppress(Exception):  # never hide the failure itself
            screenshot(page, f"{name}-failure")
        raise
    finally:
        context.close()
    assert errors == [], f"script errors on the page: {errors}"
    assert outside == [], f"the page asked other hosts: {outside}"


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar stays on top of the image
    page.screenshot(path=str(path), full_page=True)
    _SCREENSHOTS.append(path)
    return path


_SCREENSHOTS: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _list_screenshots(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the screenshots taken (past pytest's output capture) once the module is done."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        for path in _SCREENSHOTS:
            print(f"\nscreenshot: {path}", end="")
        print()
    _SCREENSHOTS.clear()


def expect(target: Any) -> Any:
    """Playwright's `expect`, imported only once the browser fixture found Playwright."""
    from playwright.sync_api import expect as pw_expect

    return pw_expect(target)


def card(page: Page) -> Locator:
    return page.locator(f'article.model[data-model="{MODEL}"]')


def file_row(page: Page, path: str) -> Locator:
    return card(page).locator(f'tr[data-file="{path}"]')


def host(origin: GatewayServer | HubServer) -> str:
    """What the files table shows of an origin: its host and port."""
    return origin.url.removeprefix("http://")


def assert_fits_the_screen(page: Page) -> None:
    """Nothing wider than a laptop's window: no sideways scrolling."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= LAPTOP_WIDTH, f"the page is {width} px wide at {LAPTOP_WIDTH} px"


def tab_to(page: Page, label: str, presses: int = 40) -> None:
    """Press Tab until the element named `label` has the focus."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "() => document.activeElement && document.activeElement.getAttribute('aria-label')"
        )
        if focused == label:
            return
    raise AssertionError(f"Tab never reached {label!r}")


# -- the server ----------------------------------------------------------------------------


class Serve:
    """`python -m modelfetch serve` in a subprocess, on loopback origins; restartable."""

    def __init__(
        self,
        tmp_path: Path,
        hub: HubServer,
        gateways: list[GatewayServer],
        files: dict[str, bytes],
        token: str | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.dir = tmp_path
        self.args = args
        self.models_dir = tmp_path / "models"
        config = tmp_path / "config.toml"
        config.write_text(
            "[ipfs]\ntimeout = 5\nretries = 2\npause = 0.05\n"
            "[huggingface]\nretries = 2\ntimeout = 5\nbackoff = 0.05\n"
            f'[models.{MODEL}]\ndir = "org/{MODEL}"\nfiles = {json.dumps(list(files))}\n'
            f'huggingface = {{ repo = "{REPO}" }}\nipfs = {{ cid = "{CID}" }}\n'
            f'[models.{json.dumps(HOSTILE)}]\ndir = "org/hostile"\n'
            f"files = {json.dumps([HOSTILE_FILE])}\n"
            f'huggingface = {{ repo = "{REPO}" }}\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH", "HF_"))}
        env.update(
            MODELFETCH_HOME=str(self.models_dir),
            MODELFETCH_CONFIG=str(config),
            HF_ENDPOINT=hub.url,
            MODELFETCH_IPFS_GATEWAYS=",".join(g.url for g in gateways),
        )
        if token is not None:
            env["MODELFETCH_TOKEN"] = token
        env["HF_HOME"] = str(tmp_path / "hf-home")  # never the user's Hugging Face cache
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.runs = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/gm/"

    def start(self, port: int = 0) -> None:
        self.runs += 1
        stdout = self.dir / f"serve-{self.runs}.out"
        stderr = self.dir / f"serve-{self.runs}.err"
        with stdout.open("w") as out, stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modelfetch", "serve", "--port", str(port), *self.args],
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = re.search(r"http://127\.0\.0\.1:(\d+)/gm/", stdout.read_text())
            if found:
                self.port = int(found.group(1))
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"modelfetch serve exited: {stderr.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"modelfetch serve did not start: {stderr.read_text()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def serving(
    tmp_path: Path,
    hub: HubServer,
    gateways: list[GatewayServer],
    *,
    token: str | None = None,
    manifest: bool = False,
    args: tuple[str, ...] = (),
) -> Iterator[Serve]:
    """Serve MODEL from `hub` and `gateways` (in that gateway order) with a fresh models dir.

    `manifest`: record the files' sizes and hashes first, so every layer is tried even
    when the hub is failing (without it, the identity comes from the hub's metadata).
    """
    files = model_files()
    for path, data in files.items():
        hub.add_file(REPO, path, data)
    for gw in gateways:
        gw.add_directory(CID, files)
    server = Serve(tmp_path, hub, gateways, files, token, args)
    if manifest:
        entries = {p: FileEntry(len(d), hashlib.sha256(d).hexdigest()) for p, d in files.items()}
        Store(server.models_dir).manifest.record_files(MODEL, entries)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_live(page: Page) -> None:
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(card(page)).to_be_visible()


# -- the tests -----------------------------------------------------------------------------


def test_progress_bar_moves_to_100_for_a_download_started_from_the_keyboard(
    browser: Browser, tmp_path: Path, hub: HubServer, gw1: GatewayServer
) -> None:
    gw1.inject(faults.slow(80_000))  # the 300 kB ONNX file takes about 4 s
    with serving(tmp_path, hub, [gw1]) as server, opened(browser, server.url, "progress") as page:
        wait_live(page)
        expect(card(page).locator(".badge.state")).to_have_text("missing")
        hostile = page.get_by_role("article", name=HOSTILE, exact=True)
        expect(hostile.get_by_role("heading", name=HOSTILE, exact=True)).to_be_visible()
        expect(hostile.get_by_role("rowheader", name=HOSTILE_FILE, exact=True)).to_be_visible()
        expect(page.locator("#main img, #main script")).to_have_count(0)
        tab_to(page, f"Download {MODEL}")
        page.keyboard.press("Enter")

        bar = file_row(page, ONNX).get_by_role("progressbar", name=f"{ONNX} download progress")
        expect(bar).to_be_visible()
        values: list[float] = []
        shot: Path | None = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            value = float(bar.evaluate("el => el.hasAttribute('value') ? el.value : -1"))
            if not values or value != values[-1]:
                values.append(value)
            if shot is None and 25 <= value <= 75:
                row = file_row(page, ONNX)
                expect(row.locator(".source")).to_have_text(f"ipfs{host(gw1)}")
                expect(row.locator(".speed")).to_have_text(re.compile(r"^[\d.]+ (B|KiB|MiB)/s$"))
                expect(row.locator(".eta")).to_have_text(re.compile(r"^\d+ s left$"))
                expect(row.locator(".phase")).to_contain_text(" KiB of 293 KiB")
                expect(
                    card(page).get_by_role("button", name=f"Downloading {MODEL}")
                ).to_be_visible()
                shot = screenshot(page, "mid-download")
            if value >= 100:
                break
            time.sleep(0.1)
        assert values and values[-1] == 100, values
        between = [v for v in values if 0 < v < 100]
        assert len(between) >= 3, f"the bar did not move through the transfer: {values}"
        assert values == sorted(values), f"the bar went backwards: {values}"
        assert shot is not None, f"never saw the bar mid-way: {values}"

        expect(card(page).locator(".badge.state")).to_have_text("complete")
        for path in model_files():
            expect(file_row(page, path).locator(".badge")).to_have_text("verified")
        expect(card(page).locator(".model-status")).to_contain_text("3 files verified")
        expect(card(page).get_by_role("button", name=f"Download {MODEL}")).to_be_visible()
        expect(page.locator("#announcer")).to_contain_text("download complete")
        # the attempts table and the chart's data follow the download
        expect(page.locator("#attempts tbody tr").first).to_contain_text(gw1.url)
        page.get_by_label("Range").select_option("15m")
        page.get_by_text("The chart's data as a table").click()
        expect(page.locator("#chart-table tbody tr").first).to_contain_text("/s")
        expect(page.locator("#chart")).to_have_attribute(
            "aria-label", re.compile("Peak throughput")
        )
        assert_fits_the_screen(page)
        assert page.evaluate("window.__xss") is None
        screenshot(page, "after-download")


def test_failing_gateway_shows_as_failing_and_retry_succeeds(
    browser: Browser, tmp_path: Path, hub: HubServer, gw1: GatewayServer, gw2: GatewayServer
) -> None:
    gw2.inject(faults.status(500))  # the injected failing gateway: first in line, never fixed
    gw1.inject(faults.status(500))  # with these two, the first download fails
    hub.inject(faults.status(500))
    with (
        serving(tmp_path, hub, [gw2, gw1], manifest=True) as server,
        opened(browser, server.url, "retry") as page,
    ):
        wait_live(page)
        card(page).get_by_role("button", name=f"Download {MODEL}").click()

        retry = card(page).get_by_role("button", name=f"Retry {MODEL}")
        expect(retry).to_be_visible(timeout=30_000)
        expect(card(page).locator(".model-status")).to_contain_text("failed")
        expect(card(page).locator(".error-list")).to_contain_text("AllSourcesFailed")
        expect(page.locator("#announcer")).to_contain_text("download failed")

        failing = page.locator(f'#health tr[data-gateway="{gw2.url}"]')
        expect(failing.locator(".badge")).to_have_text(re.compile("^(down|degraded)$"))
        expect(page.locator('#health section[data-layer="ipfs"] h3 .badge')).to_have_text("down")
        attempts = page.locator(f'#attempts tr[data-gateway="{gw2.url}"]').first
        expect(attempts).to_contain_text("error")
        expect(attempts).to_contain_text("HTTPStatus")
        assert_fits_the_screen(page)
        screenshot(page, "failed")

        gw1.clear_faults()
        hub.clear_faults()
        retry.click()
        expect(card(page).locator(".badge.state")).to_have_text("complete", timeout=30_000)
        expect(card(page).get_by_role("button", name=f"Download {MODEL}")).to_be_visible()
        expect(card(page).locator(".error-list")).to_have_count(0)
        expect(card(page).locator(".model-status")).to_contain_text("3 files verified")
        for path in model_files():
            expect(file_row(page, path).locator(".source")).to_have_text(f"ipfs{host(gw1)}")
        expect(failing.locator(".badge")).to_have_text(re.compile("^(down|degraded)$"))
        expect(page.locator(f'#health tr[data-gateway="{gw1.url}"]')).to_be_visible()
        # Each gateway's score, best first: gw1 delivered after failing, gw2 only failed.
        ipfs_rows = page.locator('#health section[data-layer="ipfs"] tbody tr')
        expect(ipfs_rows.first).to_have_attribute("data-gateway", gw1.url)
        expect(ipfs_rows.first.locator(".score")).to_have_text(re.compile(r"^\d+\.\d$"))
        expect(failing.locator(".score")).to_have_text(re.compile(r"^\d+\.\d$"))
        assert_fits_the_screen(page)
        screenshot(page, "retried")


def test_page_recovers_after_a_server_restart(
    browser: Browser, tmp_path: Path, hub: HubServer, gw1: GatewayServer
) -> None:
    with serving(tmp_path, hub, [gw1]) as server, opened(browser, server.url, "restart") as page:
        wait_live(page)
        tab_to(page, f"Download {MODEL}")
        page.keyboard.press("Space")
        expect(card(page).locator(".badge.state")).to_have_text("complete")
        banner = page.locator("#banner")
        expect(banner).to_be_hidden()

        port = server.port
        server.stop()
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("Reconnecting")
        expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
        expect(page.locator("#announcer")).to_contain_text("Lost the connection")
        # Changed while the server is away: the page must show it once it is back.
        (server.models_dir / "org" / MODEL / "config.json").unlink()
        time.sleep(1.0)  # a few reconnect tries fail first
        screenshot(page, "reconnecting")
        server.start(port)

        expect(banner).to_be_hidden(timeout=20_000)
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        expect(page.locator("#announcer")).to_contain_text("Reconnected")
        expect(card(page).locator(".badge.state")).to_have_text("partial")
        expect(file_row(page, "config.json").locator(".badge")).to_have_text("missing")
        # live again: a download started now is followed to its end over the new socket
        card(page).get_by_role("button", name=f"Download {MODEL}").click()
        expect(card(page).locator(".badge.state")).to_have_text("complete")
        expect(file_row(page, "config.json").locator(".badge")).to_have_text("verified")
        expect(file_row(page, "config.json").locator("progress")).to_have_js_property("value", 100)


def test_token_is_asked_for_and_then_used(
    browser: Browser, tmp_path: Path, hub: HubServer, gw1: GatewayServer
) -> None:
    token = "tok-" + secrets.token_hex(16)
    with (
        serving(tmp_path, hub, [gw1], token=token) as server,
        opened(browser, server.url, "token") as page,
    ):
        field = page.get_by_label("Access token", exact=True)
        expect(field).to_be_visible()
        expect(field).to_be_focused()
        expect(page.locator("#main")).to_be_hidden()
        field.fill("not-the-token")
        page.keyboard.press("Enter")
        expect(page.locator("#auth-error")).to_contain_text("refused")
        expect(field).to_be_visible()
        screenshot(page, "token-refused")

        field.fill(token)
        page.keyboard.press("Enter")
        expect(page.locator("#auth")).to_be_hidden()
        wait_live(page)
        assert page.evaluate("sessionStorage.getItem('modelfetch.token')") == token
        card(page).get_by_role("button", name=f"Download {MODEL}").click()
        expect(card(page).locator(".badge.state")).to_have_text("complete")
        expect(page.locator(f'#health tr[data-gateway="{gw1.url}"]')).to_be_visible()

        page.reload()  # the tab keeps the token: no question this time
        wait_live(page)
        expect(page.locator("#auth")).to_be_hidden()
        expect(card(page).locator(".badge.state")).to_have_text("complete")
        page.get_by_role("button", name="Forget token").click()
        expect(page.get_by_label("Access token", exact=True)).to_be_visible()


def test_the_mirror_panel_shows_hits_and_misses(
    browser: Browser, tmp_path: Path, hub: HubServer, gw1: GatewayServer
) -> None:
    import huggingface_hub as hf

    with serving(tmp_path, hub, [gw1], args=("--mirror",)) as server:
        base = server.url.removesuffix("/gm/")
        for client in ("a", "b"):  # a miss (pulled through), then a hit
            got = hf.hf_hub_download(
                REPO, "config.json", cache_dir=tmp_path / client, endpoint=base
            )
            assert Path(got).read_bytes() == model_files()["config.json"]
        with opened(browser, server.url, "mirror") as page:
            wait_live(page)
            panel = page.locator("#mirror")
            expect(panel).to_be_visible()
            expect(panel).to_contain_text("50 % (1 hits, 1 misses)")
            expect(panel).to_contain_text(f"HF_ENDPOINT={base}")
            assert_fits_the_screen(page)
            screenshot(page, "mirror")
    (tmp_path / "plain").mkdir()
    with (
        serving(tmp_path / "plain", hub, [gw1]) as server,
        opened(browser, server.url, "plain") as page,
    ):
        wait_live(page)
        expect(page.locator("#mirror")).to_be_hidden()

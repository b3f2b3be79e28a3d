"""Firefox for the browser tests and the benches: Debian's Firefox ESR, headless, driven over
Marionette with Mozilla's own `marionette_driver`; fake camera and microphone, WebRTC on
loopback only.

Each `launch_firefox()` gets a profile of its own (a temporary directory with a `user.js`)
and a free Marionette port, and on the way out always ends the browser (its process group,
by id) and removes the profile. The prefs below keep Firefox off the network: no updates,
telemetry, remote settings, safe browsing or first-run pages (this machine has no internet,
and a Firefox waiting on it would hang a test). ICE gathers host candidates on loopback, with
their real addresses (no mDNS names), UDP only. Firefox also gathers this host's other
addresses (`media.peerconnection.ice.force_interface` has no effect in 153); the server's
ICE is pinned to 127.0.0.1, so every candidate pair has 127.0.0.1 at the server's end and
no packet leaves the host.

marionette_driver is synchronous. `Firefox` runs each of its calls in a thread
(`asyncio.to_thread`), one at a time, so async tests and benches can await it while their
own event loop keeps serving the Parlor app and the aiortc peers.

What a page complained about comes from two places: Firefox prints content `console.*`
calls to its stdout (`devtools.console.stdout.content`), which goes to a log file; script
errors and CSP violations (`nsIScriptError`, which the console API does not see) are
collected by a console-service listener in the browser's chrome context.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tests.harness import page
from tests.harness.system import ARTIFACTS, FIREFOX

T = TypeVar("T")

PrefValue = bool | int | str

PREFS: dict[str, PrefValue] = {
    # Fake devices, allowed without asking. Without the two permission prefs Firefox
    # treats the page as one that may not see local addresses and gathers only the
    # default route's address, which a loopback-only network lacks.
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "permissions.default.camera": 1,
    "permissions.default.microphone": 1,
    # ICE: loopback host candidates, with their real address; UDP only, no proxy.
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.tcp": False,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.ice.default_address_only": False,
    "media.peerconnection.ice.proxy_only_if_behind_proxy": False,
    "media.peerconnection.use_document_iceservers": True,
    # What a page says goes to stdout (read back by `problems()`), the browser's own not.
    "devtools.console.stdout.content": True,
    "devtools.console.stdout.chrome": False,
    # No first-run, welcome, default-browser or session-restore pages.
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.startup.homepage": "about:blank",
    "startup.homepage_welcome_url": "about:blank",
    "startup.homepage_welcome_url.additional": "",
    "browser.aboutwelcome.enabled": False,
    "browser.sessionstore.resume_from_crash": False,
    "toolkit.startup.max_resumed_crashes": -1,
    "browser.tabs.warnOnClose": False,
    "browser.warnOnQuit": False,
    "browser.newtabpage.enabled": False,
    "browser.translations.enable": False,
    # No background networking: updates, telemetry, studies, remote settings, safe
    # browsing, push, captive-portal and connectivity probes, prefetching, DNS over HTTPS.
    "app.update.auto": False,
    "app.update.enabled": False,
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "app.shield.optoutstudies.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "browser.ping-centre.telemetry": False,
    "services.settings.server": "data:,",
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.blocklist.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "extensions.pocket.enabled": False,
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-manager.url": "",
    "dom.push.connection.enabled": False,
    "dom.push.serverURL": "",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "network.trr.mode": 5,
    "geo.provider.network.url": "",
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "browser.search.update": False,
    "identity.fxaccounts.enabled": False,
    "browser.discovery.enabled": False,
    "browser.topsites.contile.enabled": False,
    "security.OCSP.enabled": 0,
}

# Registered once per browser, in a named chrome sandbox that outlives the script.
LISTEN_FOR_SCRIPT_ERRORS = """
const seen = [];
globalThis.parlorScriptErrors = seen;
Services.console.registerListener({
  observe(message) {
    if (!(message instanceof Ci.nsIScriptError)) return;
    if (message.flags & Ci.nsIScriptError.warningFlag) return;
    if (message.flags & Ci.nsIScriptError.infoFlag) return;
    seen.push({source: message.sourceName || "", text: message.errorMessage, category: message.category});
  },
});
"""
READ_SCRIPT_ERRORS = "return globalThis.parlorScriptErrors.slice(arguments[0]);"
# Content lines print their arguments as source (`console.error: "text" (new Error(...))`);
# the browser's own console instances print an unquoted prefix (`console.error: RSLoader: `).
CONSOLE_LINE = re.compile(r'^console\.(?:error: (?![A-Za-z][\w.-]*: ).*|warn: "parlor:.*)$')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def user_js(prefs: Mapping[str, PrefValue]) -> str:
    """`user_pref(...)` lines; JSON-like literals are what user.js takes."""

    def literal(value: PrefValue) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "".join(f'user_pref("{name}", {literal(value)});\n' for name, value in prefs.items())


class Firefox:
    """One running Firefox with one window, driven one call at a time.

    `open(url)` loads a page in the window (the previous page unloads, so its call ends);
    `problems()` then reports what that page complained about."""

    def __init__(self, client: Any, process: subprocess.Popen[bytes], root: Path) -> None:
        self._client = client
        self._process = process
        self._root = root
        self._lock = asyncio.Lock()
        self._log_mark = 0
        self._error_mark = 0
        self._origin = ""

    @property
    def log_path(self) -> Path:
        return self._root / "firefox.log"

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def version(self) -> str:
        """e.g. "153.8.0" (the browser's own answer when the session started)."""
        return str(self._client.session_capabilities.get("browserVersion", "unknown"))

    async def _do(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._lock:
            return await asyncio.to_thread(partial(call, *args, **kwargs))

    async def open(self, url: str) -> None:
        """Load `url` in the window and wait for its load event."""
        self._log_mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._error_mark = len(await self._chrome(READ_SCRIPT_ERRORS, 0))
        parts = urlsplit(url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        await self._do(self._client.navigate, url)

    async def evaluate(self, function: str, *args: Any) -> Any:
        """Call the JavaScript function expression `function` in the page with `args` and
        return its result; a promise is awaited (as Playwright's `page.evaluate` does)."""
        # sandbox=None: in the page's own global, not behind an Xray wrapper, so what the
        # page put on `window` (e.g. `window.__parlorPc`) is visible.
        return await self._do(
            self._client.execute_script,
            f"return ({function})(...arguments);",
            script_args=list(args),
            sandbox=None,
        )

    async def wait_for(self, function: str, *args: Any, timeout: float = 15.0) -> Any:
        """Poll `function` until its result is truthy (tests/harness/page.py)."""
        return await page.wait_for(self, function, *args, timeout=timeout)

    async def click(self, selector: str) -> None:
        """A real (trusted) click on the element, as a person's: it counts as a user gesture."""
        from marionette_driver.by import By

        def click() -> None:
            self._client.find_element(By.CSS_SELECTOR, selector).click()

        await self._do(click)

    async def screenshot(self, name: str) -> Path:
        """The window's content as tests/artifacts/`name`.png."""
        png = await self._do(self._client.screenshot, format="binary")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(png)
        return path

    async def problems(self, allow: str | None = None) -> list[str]:
        """Console errors, `parlor:` warnings, script errors and CSP violations of the page
        opened last (those matching the regular expression `allow` left out)."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_mark)
            lines = log.read().decode(errors="replace").splitlines()
        found = [f"console: {line}" for line in lines if CONSOLE_LINE.match(line)]
        for error in await self._chrome(READ_SCRIPT_ERRORS, self._error_mark):
            if error["source"].startswith(self._origin):
                found.append(f"{error['category']}: {error['text']} ({error['source']})")
        return [p for p in found if not (allow and re.search(allow, p))]

    async def _chrome(self, script: str, *args: Any) -> Any:
        def run() -> Any:
            with self._client.using_context("chrome"):
                return self._client.execute_script(
                    script, script_args=list(args), sandbox="parlor", new_sandbox=False
                )

        return await self._do(run)

    async def close(self) -> None:
        """End the session, then the browser's process group, then remove the profile."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._do(self._client.delete_session), 10)
        await asyncio.to_thread(stop_process_group, self._process)
        shutil.rmtree(self._root, ignore_errors=True)


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM to the group `process` leads (it was started in a session of its own), then
    SIGKILL if it has not exited within `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # content processes the parent left behind


@asynccontextmanager
async def launch_firefox(
    prefs: Mapping[str, PrefValue] | None = None, *, startup_timeout: float = 60.0
) -> AsyncIterator[Firefox]:
    """A headless Firefox ESR with a fresh profile (PREFS, then `prefs`); always stopped and
    its profile removed on the way out."""
    from marionette_driver.marionette import Marionette

    root = Path(tempfile.mkdtemp(prefix="parlor-firefox-"))
    profile = root / "profile"
    profile.mkdir()
    port = free_port()
    (profile / "user.js").write_text(user_js({**PREFS, **(prefs or {}), "marionette.port": port}))
    env = {**os.environ, "MOZ_HEADLESS": "1", "MOZ_CRASHREPORTER_DISABLE": "1"}
    with open(root / "firefox.log", "wb") as log:
        process = subprocess.Popen(
            [str(FIREFOX), "--headless", "--marionette", "-remote-allow-system-access",
             "--no-remote", "--profile", str(profile), "about:blank"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    firefox: Firefox | None = None
    try:
        client = Marionette(host="127.0.0.1", port=port, startup_timeout=startup_timeout)
        await asyncio.to_thread(client.start_session)
        firefox = Firefox(client, process, root)
        await firefox._chrome(LISTEN_FOR_SCRIPT_ERRORS)
        yield firefox
    finally:
        if firefox is not None:
            await firefox.close()
        else:
            await asyncio.to_thread(stop_process_group, process)
            shutil.rmtree(root, ignore_errors=True)

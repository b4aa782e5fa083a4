"""Headless Chromium driven over the DevTools protocol, in the test's own trio run.

Just enough of CDP for a browser test: start Debian's ``chromium`` (``.ci/run``
installs it), connect to its DevTools WebSocket with trio-websocket (a dependency
already), open tabs as flat sessions on that one connection, evaluate
JavaScript, wait for the DOM, take screenshots. No Node, no browser download,
no threads: a page waits inside the browser (a ``MutationObserver`` resolving a
promise), so nothing here polls or sleeps.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket

__all__ = ["DEFAULT_WAIT", "Browser", "CdpError", "Tab", "chromium", "open_browser"]

#: Chromium prints this on stderr once it listens (``--remote-debugging-port=0``).
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")
#: How long :meth:`Tab.wait_for` waits when the caller set no deadline, seconds.
DEFAULT_WAIT = 10.0
#: What :meth:`Tab.wait_for` leaves of the caller's deadline for the answer to come back.
_MARGIN = 0.25
#: Screenshots arrive as one base64 message.
_MAX_MESSAGE = 64 * 1024 * 1024

_FLAGS = (
    "--headless=new",
    # The sandbox needs user namespaces, which containers (and root) do not have.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a container's /dev/shm is small
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-component-update",
    "--disable-background-networking",
    "--disable-sync",
    "--mute-audio",
    # Every page runs at full speed, visible or not: a background tab's timers
    # (the reconnect backoff) must not be throttled to once a minute.
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class CdpError(Exception):
    """A DevTools command failed, or JavaScript it ran threw."""


def chromium() -> str:
    """The Chromium binary; CI installs Debian's ``chromium`` (``.ci/run``)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    raise RuntimeError("no chromium on PATH: install it (apt-get install chromium; see .ci/run)")


@attrs.define
class _Call:
    done: trio.Event = attrs.Factory(trio.Event)
    result: dict[str, Any] | None = None
    error: str | None = None


class Browser:
    """One Chromium, one DevTools connection; tabs are sessions on it."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self._closed = False
        self._next_id = 1
        self._calls: dict[int, _Call] = {}
        self._tabs: dict[str, Tab] = {}

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        """Run a DevTools command; its result (raises :class:`CdpError` on an error)."""
        if self._closed:
            raise CdpError(f"{method}: the DevTools connection is closed")
        call_id, self._next_id = self._next_id, self._next_id + 1
        command: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session_id is not None:
            command["sessionId"] = session_id
        call = self._calls[call_id] = _Call()
        try:
            await self._ws.send_message(json.dumps(command))
            await call.done.wait()
        finally:
            del self._calls[call_id]
        if call.error is not None:
            raise CdpError(f"{method}: {call.error}")
        assert call.result is not None
        return call.result

    async def read(self) -> None:
        """Answer calls and pass events to their tab, until the connection closes
        (then every call still waiting fails)."""
        try:
            while True:
                message = json.loads(await self._ws.get_message())
                if "id" in message:
                    call = self._calls.get(message["id"])
                    if call is not None:
                        error = message.get("error")
                        call.error = None if error is None else str(error.get("message", error))
                        call.result = message.get("result", {})
                        call.done.set()
                elif (tab := self._tabs.get(message.get("sessionId", ""))) is not None:
                    tab.on_event(message["method"], message.get("params", {}))
        except trio_websocket.ConnectionClosed:
            self._closed = True
            for call in self._calls.values():
                call.error = "the DevTools connection closed"
                call.done.set()

    async def new_tab(self, url: str, *, width: int = 900, height: int = 640) -> Tab:
        """A new tab of ``width`` x ``height`` CSS pixels, showing ``url`` once loaded."""
        # Each in a window of its own: a background tab paints nothing, so its
        # screenshot would wait for a frame that never comes.
        target = await self.send("Target.createTarget", {"url": "about:blank", "newWindow": True})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        tab = Tab(self, attached["sessionId"])
        self._tabs[tab.session_id] = tab
        await tab.send("Runtime.enable")
        await tab.send("Page.enable")
        await tab.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        await tab.goto(url)
        return tab


class Tab:
    """One tab: evaluate, wait for a condition on its DOM, screenshot.

    ``errors`` collects what the page's JavaScript threw and logged as errors, so a
    test can check the app ran clean.
    """

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.errors: list[str] = []
        self._loaded = trio.Event()

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session_id)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description", details["text"]))
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.errors.append(" ".join(str(a.get("value", "")) for a in params["args"]))

    async def goto(self, url: str) -> None:
        """Navigate, and return once the page's load event fired (its scripts ran)."""
        self._loaded = trio.Event()
        navigated = await self.send("Page.navigate", {"url": url})
        if "errorText" in navigated:
            raise CdpError(f"navigating to {url}: {navigated['errorText']}")
        await self._loaded.wait()

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` (awaited when it is a promise), as JSON."""
        reply = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise CdpError(details.get("exception", {}).get("description", details["text"]))
        return reply["result"].get("value")

    async def wait_for(self, predicate: str, *, after: str = "") -> Any:
        """Wait until the JavaScript expression ``predicate`` is truthy and return its
        value. Checked now and after every change to the DOM (a
        ``MutationObserver``), so it returns as soon as the page shows it, and sees
        each state the page passes through. ``after`` (JavaScript statements) runs
        once the observer is watching: do something, and see what it shows first.

        Bound it with ``trio.fail_after``: the page gives up just before that
        deadline (:class:`CdpError` saying what it waited for), or after
        :data:`DEFAULT_WAIT` seconds without one.
        """
        left = trio.current_effective_deadline() - trio.current_time()
        ms = max(0, int(min(left - _MARGIN, DEFAULT_WAIT) * 1000))
        source = json.dumps(predicate)
        script = f"""new Promise((resolve, reject) => {{
            const test = () => {{ try {{ return ({predicate}); }} catch (e) {{ return false; }} }};
            const observer = new MutationObserver(() => {{ const v = test(); if (v) done(v); }});
            const timer = setTimeout(() => {{
                observer.disconnect();
                reject(new Error("timed out after {ms} ms waiting for " + {source}));
            }}, {ms});
            const done = (v) => {{ observer.disconnect(); clearTimeout(timer); resolve(v); }};
            observer.observe(document, {{
                subtree: true, childList: true, characterData: true, attributes: true
            }});
            {after};
            const now = test();
            if (now) done(now);
        }})"""
        return await self.evaluate(script)

    async def click(self, selector: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    async def fill(self, selector: str, value: str) -> None:
        await self.evaluate(
            f"document.querySelector({json.dumps(selector)}).value = {json.dumps(value)}"
        )

    async def screenshot(self) -> bytes:
        """The viewport, as PNG."""
        await self.send("Page.bringToFront")
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        return base64.b64decode(shot["data"])


@asynccontextmanager
async def open_browser(profile: Path) -> AsyncIterator[Browser]:
    """Headless Chromium (its profile in ``profile``) for the block; closed after it,
    and killed if it does not exit in time."""
    args = [chromium(), *_FLAGS, f"--user-data-dir={profile}", "about:blank"]
    proc = await trio.lowlevel.open_process(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        stderr = proc.stderr
        output = b""
        with trio.fail_after(20):
            while (found := _LISTENING.search(output)) is None:
                chunk = await stderr.receive_some()
                if not chunk:
                    raise RuntimeError(f"chromium exited before listening: {output.decode()}")
                output += chunk

        async def drain() -> None:
            # Chromium keeps logging to stderr; a full pipe would block it.
            while await stderr.receive_some():
                pass

        async with (
            trio_websocket.open_websocket_url(
                found.group(1).decode(), max_message_size=_MAX_MESSAGE, disconnect_timeout=2
            ) as ws,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(drain)
            browser = Browser(ws)
            nursery.start_soon(browser.read)
            yield browser
            # Chromium may drop the connection before it answers: either is fine.
            with trio.move_on_after(5), contextlib.suppress(CdpError):
                await browser.send("Browser.close")
            nursery.cancel_scope.cancel()
        with trio.fail_after(10):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

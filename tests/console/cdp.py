#!/usr/bin/env python3
"""Drives Debian's chromium, headless, over the Chrome DevTools Protocol, for the web
console tests (tests/tests/console.rs):

    tools/venv/bin/python tests/console/cdp.py --chromium /usr/bin/chromium --profile DIR

DIR is an empty directory the caller owns: chromium's profile (--user-data-dir), where
chromium also writes the DevToolsActivePort file this script finds its port in.

The protocol is one JSON object per line each way. Once chromium is up and the page is
attached, the first line out is

    {"ready": true, "version": "Chrome/156.0.8078.114"}

(the product of Browser.getVersion). Then each line in is a command, answered by exactly
one line out, {"ok": true, ...} or {"ok": false, "error": "..."}:

    {"op": "goto", "url": U}          navigate, wait for the load event (30 s)
                                      -> {"ok": true}
    {"op": "eval", "js": J}           Runtime.evaluate, by value, promises awaited
                                      -> {"ok": true, "value": V}, a throw -> ok false
    {"op": "wait", "js": J, "timeout_ms": N}
                                      evaluate J every 50 ms until it is truthy
                                      -> {"ok": true, "value": V}, or after N ms (10000
                                      if not given) ok false "timed out after N ms
                                      waiting for: J; last value: ..." (a throw counts
                                      as not yet, and is the last value)
    {"op": "screenshot", "path": P}   a PNG of the viewport (1280x900) written to P
                                      -> {"ok": true}
    {"op": "errors"}                  every JavaScript exception and console.error of
                                      the page so far, as strings -> {"ok": true,
                                      "value": [...]}
    {"op": "close"}                   close chromium, wait for it -> {"ok": true}, and
                                      exit 0

End of input closes chromium too. Events that come in while a command waits for its
answer are kept (errors) or used (the load event), never dropped. A JavaScript dialog
(alert, confirm, prompt) is accepted at once, so that it cannot hang the page.

Diagnostics go to stderr only. Chromium's own output, noisy even when all is well (no
D-Bus here), goes to DIR/chromium.log, whose last lines are copied to stderr when
chromium fails to start or goes away. Chromium runs in its own
process group, killed (SIGKILL) when this script ends, whichever way but SIGKILL, after
Browser.close when there was time for it; the script is a child subreaper, so the
helpers chromium leaves behind are its to kill and reap, and none outlives it, not even
as a zombie (chromium's crash handler, which runs in a session of its own, included).
On SIGKILL the kernel kills chromium (PR_SET_PDEATHSIG), whose helpers then exit on
their own. Chromium's $HOME and $TMPDIR are in DIR/home, so that it writes nothing
outside DIR.

Exit codes: 0 after close or end of input, 1 when chromium could not be started or
attached to (the reason on stderr, and on stdout as {"ready": false, "error": ...}),
2 for a bad command line.
"""

import argparse
import base64
import ctypes
import json
import os
import signal
import subprocess
import sys
import time

import websocket

STARTUP_TIMEOUT = 30.0  # seconds for chromium to come up and show its page
LOAD_TIMEOUT = 30.0  # seconds for a navigation's load event
CALL_TIMEOUT = 30.0  # seconds for any one DevTools command's answer
POLL_INTERVAL = 0.02  # seconds between looks at DevToolsActivePort
WAIT_INTERVAL = 0.05  # seconds between evaluations of a "wait"
DEFAULT_WAIT_MS = 10000
VIEWPORT = (1280, 900)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# The protocol's own stdout; anything else that prints goes to stderr.
OUT = sys.stdout
sys.stdout = sys.stderr

START = time.monotonic()


def log(message):
    print(f"cdp.py [{time.monotonic() - START:7.3f}s]: {message}", file=sys.stderr, flush=True)


def reply(obj):
    OUT.write(json.dumps(obj) + "\n")
    OUT.flush()


class CdpError(Exception):
    """A command that failed: its message is the "error" of the answer."""


class BrowserGone(CdpError):
    """The DevTools connection is closed: chromium has exited or crashed."""


class NoAnswer(CdpError):
    """A command chromium did not answer in time (an evaluation still running, say)."""


def child_setup(parent, mask):
    """In chromium's process, before exec: to be killed when this script dies, even by
    SIGKILL; and never to run if this script died before that was set."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(127)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def js_truthy(remote):
    """JavaScript's truthiness of a Runtime.RemoteObject got by value."""
    kind = remote.get("type")
    if kind == "undefined":
        return False
    if kind in ("function", "symbol"):
        return True
    if kind == "object":
        return remote.get("subtype") != "null"
    if "unserializableValue" in remote:  # NaN, -0, Infinity, -Infinity, 123n
        return remote["unserializableValue"] not in ("NaN", "-0", "0n", "-0n")
    return bool(remote.get("value"))


def remote_value(remote):
    """The JSON value of a Runtime.RemoteObject got by value (null for undefined)."""
    if "value" in remote:
        return remote["value"]
    if "unserializableValue" in remote:
        return remote["unserializableValue"]
    return None


def exception_text(details):
    """One string for a Runtime.ExceptionDetails: the error with its stack if any."""
    exception = details.get("exception") or {}
    text = exception.get("description")
    if text is None and "value" in exception:
        text = f"Uncaught {json.dumps(exception['value'])}"
    if text is None:
        text = details.get("text", "exception")
    url = details.get("url")
    if url and url not in text:
        line = details.get("lineNumber", 0) + 1
        column = details.get("columnNumber", 0) + 1
        text += f" (at {url}:{line}:{column})"
    return text


def console_arg_text(arg):
    """One console.error argument as the console would show it, near enough."""
    if "value" in arg:
        value = arg["value"]
        return value if isinstance(value, str) else json.dumps(value)
    if "unserializableValue" in arg:
        return arg["unserializableValue"]
    preview = arg.get("preview")
    array = arg.get("subtype") == "array"
    if arg.get("type") == "object" and (array or "subtype" not in arg) and preview:
        # a plain object or array: its first properties rather than "Object"
        items = [
            ("" if array else f"{p['name']}: ") + p.get("value", p["type"])
            for p in preview.get("properties", [])
        ]
        if preview.get("overflow"):
            items.append("…")
        inner = ", ".join(items)
        return f"[{inner}]" if array else f"{{{inner}}}"
    if "description" in arg:
        return arg["description"]
    return arg.get("type", "?")


def our_children():
    me = os.getpid()
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == me:
            children.append(int(entry))
    return children


def reap_orphans():
    """Kills and reaps what chromium left behind: this script is a subreaper, so its
    helpers (zygotes, renderers) that outlive chromium become its children, not
    init's, and are gone, not even zombies, once it returns."""
    deadline = time.monotonic() + 10
    while True:
        children = our_children()
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            log(f"processes {children} of chromium still there after 10 s")
            return
        time.sleep(0.01)


class Browser:
    def __init__(self, chromium, profile):
        self.chromium = chromium
        self.profile = profile
        self.proc = None
        self.ws = None
        self.session = None
        self.next_id = 0
        self.responses = {}  # id -> message, answers not yet claimed
        self.waiting = set()  # ids whose answers someone waits for
        self.errors = []
        self.main_loader = None  # the loaderId of the main frame's document
        self.loaded = False  # whether that document has had its load event
        self.awaited_loader = None  # the loaderId of the navigation goto waits for
        self.awaited_committed = False  # whether that navigation has committed
        self.gone = None  # why the connection is closed, once it is
        self.detached = None  # why the page is gone, once it is
        self.log_path = os.path.join(profile, "chromium.log")  # chromium's own output

    # -- chromium's process --------------------------------------------------------

    def launch(self):
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        try:
            os.unlink(port_file)  # a stale one from an earlier run would mislead us
        except FileNotFoundError:
            pass
        args = [
            self.chromium,
            "--headless=new",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
            "--disable-extensions",
            # Nothing but the pages the tests open: no updates, sync, metrics or other
            # calls home. Even so chromium looks up accounts.google.com,
            # update.googleapis.com and more: no name but localhost resolves, so that
            # its only traffic, DNS included, is to loopback (IP literals still work).
            "--host-resolver-rules="
            "MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.* , EXCLUDE [::1]",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--no-pings",
            "--metrics-recording-only",
            "--password-store=basic",
        ]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # chromium refuses to run as root with it
        args.append("about:blank")
        # Chromium writes to $HOME whatever --user-data-dir says (its crash handler's
        # database in ~/.config/chromium, dconf's in ~/.cache): a home in the profile.
        home = os.path.join(self.profile, "home")
        os.makedirs(home, exist_ok=True)
        env = dict(
            os.environ,
            HOME=home,
            XDG_CONFIG_HOME=os.path.join(home, ".config"),
            XDG_CACHE_HOME=os.path.join(home, ".cache"),
            XDG_DATA_HOME=os.path.join(home, ".local", "share"),
            # and its org.chromium.Chromium.* temporary directories, which a killed
            # chromium leaves behind
            TMPDIR=os.path.join(home, "tmp"),
        )
        os.makedirs(env["TMPDIR"], exist_ok=True)
        log(f"starting {' '.join(args)} (its output in {self.log_path})")
        # A stop signal that came in the middle of Popen would leave a chromium that
        # nothing kills: they wait until self.proc is set (the child gets the mask back).
        parent = os.getpid()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            with open(self.log_path, "wb") as output:
                self.proc = subprocess.Popen(
                    args,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    start_new_session=True,  # its own process group, killed as one
                    preexec_fn=lambda: child_setup(parent, mask),
                )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            found = self._read_port_file(port_file)
            if found:
                port, path = found
                break
            code = self.proc.poll()
            if code is not None:
                raise CdpError(f"chromium exited with {code} before it listened for DevTools")
            if time.monotonic() > deadline:
                raise CdpError(f"no {port_file} after {STARTUP_TIMEOUT:.0f} s")
            time.sleep(POLL_INTERVAL)
        log(f"DevTools on 127.0.0.1:{port}{path}")
        return port, path

    def show_log(self, lines=40):
        """The end of chromium's output, on stderr: when something went wrong."""
        try:
            with open(self.log_path, errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
        except OSError:
            return
        log(f"the last {len(tail)} lines of {self.log_path}:")
        for line in tail:
            print(f"    {line}", file=sys.stderr)
        sys.stderr.flush()

    @staticmethod
    def _read_port_file(port_file):
        """(port, browser websocket path) once the file is there and whole."""
        try:
            with open(port_file) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return None
        if len(lines) < 2 or not lines[0].strip().isdigit():
            return None
        if not lines[1].startswith("/devtools/browser/"):
            return None
        return int(lines[0]), lines[1].strip()

    def kill(self):
        """Ends chromium's whole process group, whatever state it is in."""
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except Exception:  # noqa: BLE001
                pass
            self.ws = None
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log(f"chromium (pid {proc.pid}) still there 10 s after SIGKILL")
        reap_orphans()

    # -- the DevTools connection -----------------------------------------------------

    def connect(self, port, path):
        deadline = time.monotonic() + STARTUP_TIMEOUT
        # No Origin header: chromium refuses websocket clients that send one it was not
        # told to allow (--remote-allow-origins).
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}{path}",
            timeout=STARTUP_TIMEOUT,
            suppress_origin=True,
            enable_multithread=False,
        )
        version = self.call("Browser.getVersion", session=None)["product"]
        while True:
            targets = self.call("Target.getTargets", session=None)["targetInfos"]
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                raise CdpError(f"no page target after {STARTUP_TIMEOUT:.0f} s")
            time.sleep(POLL_INTERVAL)
        target = pages[0]
        self.session = self.call(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            session=None,
        )["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        # Headless chromium takes --window-size for the window with its (invisible)
        # browser frame, which leaves a page 1280x757: the page gets 1280x900 itself.
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": VIEWPORT[0],
                "height": VIEWPORT[1],
                "deviceScaleFactor": 1,
                "mobile": False,
            },
        )
        log(f"attached to page {target['targetId']} ({target.get('url')}), {version}")
        return version

    def send(self, method, params=None, session=True):
        if self.gone:
            raise BrowserGone(self.gone)
        if session is True:
            if self.detached:
                raise BrowserGone(self.detached)
            session = self.session
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            self.ws.send(json.dumps(message))
        except (websocket.WebSocketException, OSError) as e:
            self._lost(f"sending {method}: {e}")
        return self.next_id

    def call(self, method, params=None, session=True, timeout=CALL_TIMEOUT):
        """Sends a command and returns its result, handling events until it comes."""
        call_id = self.send(method, params, session)
        self.waiting.add(call_id)
        try:
            deadline = time.monotonic() + timeout
            while call_id not in self.responses:
                if not self.pump(deadline):
                    raise NoAnswer(f"{method}: no answer from chromium in {timeout:g} s")
        finally:
            self.waiting.discard(call_id)
        message = self.responses.pop(call_id)
        if "error" in message:
            error = message["error"]
            raise CdpError(f"{method}: {error.get('message')} {error.get('data', '')}".strip())
        return message.get("result", {})

    def pump(self, deadline):
        """Reads and handles one message; False if none came before the deadline."""
        if self.gone:
            raise BrowserGone(self.gone)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.ws.settimeout(remaining)
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return False
        except (websocket.WebSocketException, OSError) as e:
            self._lost(f"receiving: {e or type(e).__name__}")
        if not raw:
            self._lost("the DevTools connection was closed")
        self.handle(json.loads(raw))
        return True

    def pump_until(self, deadline):
        """Handles events until the deadline (a pause that still listens)."""
        while self.pump(deadline):
            pass

    def _lost(self, why):
        code = self.proc.poll() if self.proc else None
        self.gone = f"chromium is gone ({why}; exit code {code})"
        log(self.gone)
        self.show_log()
        raise BrowserGone(self.gone)

    def handle(self, message):
        if "id" in message:
            if message["id"] in self.waiting:
                self.responses[message["id"]] = message
            return  # an answer nobody waits for any more (a call that timed out)
        method = message.get("method")
        params = message.get("params", {})
        if message.get("sessionId") not in (None, self.session):
            return
        if method == "Page.frameNavigated" and not params["frame"].get("parentId"):
            self.main_loader = params["frame"].get("loaderId")
            self.loaded = False
            if self.main_loader == self.awaited_loader:
                self.awaited_committed = True
        elif method == "Page.loadEventFired":
            self.loaded = True
        elif method == "Runtime.exceptionThrown":
            text = exception_text(params.get("exceptionDetails", {}))
            self.errors.append(text)
            log(f"page exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            text = " ".join(console_arg_text(a) for a in params.get("args", []))
            self.errors.append(text)
            log(f"page console.error: {text}")
        elif method == "Page.javascriptDialogOpening":
            log(f"accepting a {params.get('type')} dialog: {params.get('message')!r}")
            self.send("Page.handleJavaScriptDialog", {"accept": True})
        elif method == "Inspector.targetCrashed":
            self.errors.append("the page crashed (Inspector.targetCrashed)")
            log("the page crashed")
        elif method == "Target.detachedFromTarget" and params.get("sessionId") == self.session:
            self.detached = "the page is gone (its target was detached: closed or crashed)"
            log(self.detached)

    # -- the commands ----------------------------------------------------------------

    def evaluate(self, js, timeout=CALL_TIMEOUT):
        """The RemoteObject of J, or CdpError with the exception's text."""
        result = self.call(
            "Runtime.evaluate",
            {
                "expression": js,
                "returnByValue": True,
                "awaitPromise": True,
                "userGesture": True,
            },
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise CdpError(exception_text(result["exceptionDetails"]))
        return result["result"]

    def goto(self, url):
        """Navigates, then waits for the load event of the new document: one that comes
        after the main frame committed to this navigation (Page.frameNavigated with its
        loaderId), never a late one of the document before, whose load was under way."""
        self.awaited_loader = None
        self.awaited_committed = False
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigating to {url}: {result['errorText']}")
        loader = result.get("loaderId")
        if not loader:
            return {}  # the same document (a #fragment): there is no load event
        self.awaited_loader = loader
        if self.main_loader == loader:  # committed while Page.navigate was answered
            self.awaited_committed = True
        deadline = time.monotonic() + LOAD_TIMEOUT
        try:
            while not (self.awaited_committed and self.loaded):
                if not self.pump(deadline):
                    raise CdpError(f"no load event for {url} in {LOAD_TIMEOUT:.0f} s")
        finally:
            self.awaited_loader = None
        return {}

    def eval(self, js):
        return {"value": remote_value(self.evaluate(js))}

    def wait(self, js, timeout_ms):
        deadline = time.monotonic() + timeout_ms / 1000
        last = "(not evaluated)"
        while True:
            try:
                # Evaluated at least once, even with no time left; a promise that
                # never settles keeps the answer back at most 1 s past the timeout.
                remote = self.evaluate(js, timeout=max(deadline - time.monotonic(), 1.0))
            except BrowserGone:
                raise
            except NoAnswer:
                last = "none (the evaluation had not finished)"
            except CdpError as e:
                last = f"exception: {e}"
            else:
                if js_truthy(remote):
                    return {"value": remote_value(remote)}
                undefined = remote.get("type") == "undefined"
                last = "undefined" if undefined else json.dumps(remote_value(remote))
            next_try = time.monotonic() + WAIT_INTERVAL
            if next_try > deadline:
                raise CdpError(
                    f"timed out after {timeout_ms} ms waiting for: {js}; last value: {last}"
                )
            self.pump_until(next_try)

    def screenshot(self, path):
        result = self.call(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False}
        )
        data = base64.b64decode(result["data"])
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as e:
            raise CdpError(f"writing {path}: {e}") from e
        return {}

    def errors_so_far(self):
        # A round trip to the page first: its events come in order with its answers,
        # so every error it reported before this is in by the time the answer is.
        self.call("Runtime.evaluate", {"expression": "0"})
        return {"value": list(self.errors)}

    def close(self):
        """Browser.close, then waits for chromium; kills it if it lingers."""
        if self.proc is None:
            return
        if not self.gone and self.ws is not None:
            try:
                self.call("Browser.close", session=None, timeout=5)
            except CdpError as e:
                log(f"Browser.close: {e}")  # the connection often closes first: fine
        try:
            code = self.proc.wait(timeout=10)
            log(f"chromium exited with {code}")
        except subprocess.TimeoutExpired:
            log("chromium still running 10 s after Browser.close: killing it")
        self.kill()  # the rest of its group, if anything of it is left


def serve(browser):
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            command = json.loads(line)
            if not isinstance(command, dict):
                raise CdpError("a command is a JSON object")
        except (ValueError, CdpError) as e:
            reply({"ok": False, "error": f"bad command {line!r}: {e}"})
            continue
        op = command.get("op")
        try:
            if op == "goto":
                answer = browser.goto(require(command, "url"))
            elif op == "eval":
                answer = browser.eval(require(command, "js"))
            elif op == "wait":
                timeout_ms = command.get("timeout_ms", DEFAULT_WAIT_MS)
                if not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
                    raise CdpError("timeout_ms is a number of milliseconds")
                answer = browser.wait(require(command, "js"), timeout_ms)
            elif op == "screenshot":
                answer = browser.screenshot(require(command, "path"))
            elif op == "errors":
                answer = browser.errors_so_far()
            elif op == "close":
                browser.close()
                reply({"ok": True})
                return
            else:
                raise CdpError(f"unknown op {op!r}")
        except CdpError as e:
            reply({"ok": False, "error": str(e)})
        else:
            reply({"ok": True, **answer})
    log("end of input")
    browser.close()


def require(command, key):
    value = command.get(key)
    if not isinstance(value, str):
        raise CdpError(f"{command.get('op')} needs a string {key!r}")
    return value


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="chromium to run")
    parser.add_argument("--profile", required=True, help="an empty directory for the profile")
    args = parser.parse_args()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    # Chromium's helpers that outlive it are reparented to this script, which reaps
    # them, instead of to init.
    LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    browser = Browser(args.chromium, os.path.abspath(args.profile))
    try:
        try:
            port, path = browser.launch()
            version = browser.connect(port, path)
        except Exception as e:  # noqa: BLE001 - whatever it is, the caller hears of it
            log(f"could not start chromium: {e!r}")
            browser.show_log()
            reply({"ready": False, "error": str(e)})
            return 1
        log(f"ready ({time.monotonic() - START:.2f} s after start)")
        reply({"ready": True, "version": version})
        serve(browser)
        return 0
    finally:
        browser.kill()


if __name__ == "__main__":
    sys.exit(main())

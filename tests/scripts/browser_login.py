#!/usr/bin/env python3
"""Signs in through sipreg's login page in headless Chromium, as a native soft client would.

Usage: browser_login.py AUTHORIZE_URL USERNAME WRONG_PASSWORD RIGHT_PASSWORD

AUTHORIZE_URL is the authorization request without `redirect_uri`: this script listens on a
loopback port (RFC 8252 §7.3), adds `redirect_uri=http://127.0.0.1:PORT/cb`, opens the page,
first submits WRONG_PASSWORD (and reads the error shown), then RIGHT_PASSWORD, and waits for the
browser to arrive at the redirect URI. It prints one JSON object:
  {"redirect_uri": ..., "callback": "/cb?code=...", "error_text": ..., "cookie_flags": ...}

The browser is driven over the Chrome DevTools Protocol on a pipe (--remote-debugging-pipe), so
nothing but the Python standard library and Debian's `chromium` is needed. Exit code 2: no
Chromium; 1: the flow failed (the reason is on stderr).
"""

import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

TIMEOUT = 60.0


class Cdp:
    """A minimal CDP client over the browser's pipe: NUL-separated JSON messages."""

    def __init__(self, to_browser, from_browser):
        self.to_browser = to_browser
        self.from_browser = from_browser
        self.buf = b""
        self.next_id = 0

    def call(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
        raise TimeoutError(method)

    def _read(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.from_browser, 65536)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)


def start_callback_listener():
    """The client's loopback redirect URI: records the first request path."""
    got = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            got.setdefault("path", self.path)
            body = b"<!DOCTYPE html><title>done</title><p id=done>signed in</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


def start_chromium(profile):
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        print("no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        sys.exit(2)
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def wire_fds():
        # Chromium reads commands on fd 3 and writes replies on fd 4.
        a, b = os.dup(to_browser_r), os.dup(from_browser_w)
        os.dup2(a, 3)
        os.dup2(b, 4)

    proc = subprocess.Popen(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            # The server's certificate comes from its own test CA, which this profile does not know.
            "--ignore-certificate-errors",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=wire_fds,
        pass_fds=(3, 4),
    )
    os.close(to_browser_r)
    os.close(from_browser_w)
    return proc, Cdp(to_browser_w, from_browser_r)


def main():
    authorize_url, username, wrong_password, right_password = sys.argv[1:5]
    server, got = start_callback_listener()
    redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/cb"
    url = authorize_url + "&redirect_uri=" + urllib.parse.quote(redirect_uri, safe="")
    profile = tempfile.mkdtemp(prefix="sipreg-chromium-")
    proc, cdp = start_chromium(profile)
    try:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        cdp.call("Page.enable", session=session)
        cdp.call("Network.enable", session=session)

        def evaluate(expr):
            try:
                r = cdp.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session)
            except RuntimeError:
                return None  # the page is navigating; its context is gone
            return r.get("result", {}).get("value")

        def wait_for(expr, what):
            deadline = time.time() + TIMEOUT
            while time.time() < deadline:
                if evaluate(expr):
                    return
                time.sleep(0.05)
            page = evaluate("document.documentElement.outerHTML") or ""
            raise TimeoutError(f"waiting for {what}; page: {page[:2000]}")

        def submit(password):
            fill = (
                "document.getElementById('username').value = %s;"
                "document.getElementById('password').value = %s;"
                "document.getElementById('submit').click(); true"
            ) % (json.dumps(username), json.dumps(password))
            if not evaluate(fill):
                raise RuntimeError("could not fill in the login form")

        cdp.call("Page.navigate", {"url": url}, session)
        wait_for("document.readyState === 'complete' && !!document.getElementById('login')", "the login page")
        cookies = cdp.call("Network.getCookies", {"urls": [url]}, session).get("cookies", [])
        login_cookie = next((c for c in cookies if c["name"] == "__Host-sipreg-login"), None)
        if login_cookie is None:
            raise RuntimeError(f"the login page set no CSRF cookie: {cookies}")

        submit(wrong_password)
        wait_for("!!document.getElementById('error') && !!document.getElementById('login')", "the error")
        error_text = evaluate("document.getElementById('error').textContent")

        submit(right_password)
        deadline = time.time() + TIMEOUT
        while "path" not in got and time.time() < deadline:
            time.sleep(0.05)
        if "path" not in got:
            page = evaluate("document.documentElement.outerHTML") or ""
            raise TimeoutError(f"the browser never reached {redirect_uri}; page: {page[:2000]}")
        print(json.dumps({
            "redirect_uri": redirect_uri,
            "callback": got["path"],
            "error_text": error_text,
            "cookie_flags": {
                "secure": login_cookie.get("secure"),
                "httpOnly": login_cookie.get("httpOnly"),
                "sameSite": login_cookie.get("sameSite"),
            },
        }))
    finally:
        try:
            cdp.call("Browser.close")
        except Exception:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # the test prints stderr; keep the reason on one line
        print(f"browser_login: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)

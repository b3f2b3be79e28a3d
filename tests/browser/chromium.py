"""How the browser tests run Chromium: Debian's build, fake devices, loopback WebRTC."""

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--allow-loopback-in-peer-connection",
]
DESKTOP = {"width": 1280, "height": 800}

# Collects CSP violations from the first moment of each page; Playwright's init
# scripts are injected by the browser, so the page's own CSP does not stop them.
RECORD_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""

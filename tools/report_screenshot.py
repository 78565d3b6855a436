"""Open a keras-reid HTML report in a real headless browser (Chromium) with the network cut off,
take a screenshot, and say whether it rendered without errors.

    python tools/report_screenshot.py runs/quickstart/report/report.html --out shot.png
    python tools/report_screenshot.py report.html --out shot.png --parts 3 --json

Install the browser with ``apt-get install chromium`` (Debian/Ubuntu) or point ``$CHROME`` at a
Chrome/Chromium binary. Every host name resolves to nothing, so a page that needs the network
shows it: ``network_requests`` counts the blocked fetches, ``errors`` lists the browser's console
and load errors. ``--parts N`` also writes the screenshot cut into N pieces (``shot-1.png``...),
small enough to look at. Exit code 0 when the page rendered with no errors, 1 otherwise, 2 when
no browser is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """The Chromium/Chrome binary to use ($CHROME first), or None."""
    env = os.environ.get("CHROME")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="report-shot-") as profile:
        cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--disable-extensions", "--mute-audio",
               f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
               "--enable-logging=stderr", "--v=0", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


ERROR_PATTERNS = (r"CONSOLE\(", r"Uncaught", r"net::ERR_(?!NAME_NOT_RESOLVED)", r"Failed to load resource",
                  r"Refused to")
NETWORK_PATTERN = r"ERR_NAME_NOT_RESOLVED|net::ERR_BLOCKED"


def check(report: Path, out: Path, width: int = 1280, height: int = 6000,
          timeout: float = 120.0) -> dict:
    """Screenshot ``report`` into ``out``; returns figures and problems (see the module doc)."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium/Chrome found; apt-get install chromium, or set $CHROME")
    url = report.resolve().as_uri()
    t0 = time.time()
    shot = _run(browser, [f"--window-size={width},{height}", f"--screenshot={out.resolve()}",
                          "--virtual-time-budget=5000", url], timeout)
    seconds = time.time() - t0
    dom = _run(browser, ["--dump-dom", "--virtual-time-budget=5000", url], timeout)
    log = shot.stderr + dom.stderr
    errors = [line.strip() for line in log.splitlines()
              if any(re.search(p, line) for p in ERROR_PATTERNS)]
    network = [line.strip() for line in log.splitlines() if re.search(NETWORK_PATTERN, line)]
    text = dom.stdout
    return {
        "browser": browser,
        "version": _version(browser),
        "report": str(report),
        "report_bytes": report.stat().st_size,
        "screenshot": str(out),
        "screenshot_written": out.is_file() and out.stat().st_size > 0,
        "seconds": round(seconds, 2),
        "rendered": "keras-reid report" in text and "</html>" in text,
        "sections": re.findall(r"<section id=\"([^\"]+)\"", text),
        "images": len(re.findall(r"<img ", text)),
        "errors": errors,
        "network_requests": len(network),
        "exit_codes": [shot.returncode, dom.returncode],
    }


def _version(browser: str) -> str:
    try:
        return subprocess.run([browser, "--version"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def split(png: Path, parts: int) -> list[Path]:
    """Cut ``png`` into ``parts`` horizontal bands (blank bottom trimmed); returns their paths."""
    import cv2
    import numpy as np

    img = cv2.imread(str(png))
    rows = np.where((img < 245).any(axis=(1, 2)))[0]
    if len(rows):
        img = img[: rows[-1] + 20]
    step = -(-img.shape[0] // parts)
    out = []
    for i in range(parts):
        band = img[i * step:(i + 1) * step]
        if band.size:
            path = png.with_name(f"{png.stem}-{i + 1}{png.suffix}")
            cv2.imwrite(str(path), band)
            out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--out", type=Path, default=Path("report.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=6000)
    ap.add_argument("--parts", type=int, default=0, help="also write the screenshot in N pieces")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report} does not exist; make it with keras-reid report RUN", file=sys.stderr)
        return 2
    try:
        result = check(args.report, args.out, args.width, args.height)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.parts and result["screenshot_written"]:
        result["parts"] = [str(p) for p in split(args.out, args.parts)]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    ok = result["rendered"] and result["screenshot_written"] and not result["errors"] \
        and not result["network_requests"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Render each page of the built site in headless Chromium to a PNG, so a person can look at them.

    python scripts/screenshots.py [_site] [--out screenshots] [--width 1280] [--height 2600]

Needs Debian's `chromium` (apt-get install chromium). Pages are opened from disk
(file://); the Vega bundle is local, so the figures render offline.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=8000"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", nargs="?", default="_site")
    ap.add_argument("--out", default="screenshots")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2600)
    ns = ap.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        print("screenshots: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    pages = sorted(Path(ns.site).glob("report/*.html")) or sorted(Path(ns.site).glob("*.html"))
    for page in pages:
        png = out / f"{page.stem}.png"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png.resolve()}",
                            f"--window-size={ns.width},{ns.height}", page.resolve().as_uri()],
                           check=True, capture_output=True, timeout=120)
        print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())

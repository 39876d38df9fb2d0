"""Screenshots of every page the product ships (tests/browser/catalogue.py), light and dark, at
1280 and 390 px wide: `scripts/screenshots [--out DIR] [--only NAME...]`.

Runs the real stack (daphne with DEBUG off and the collected static files, the embedded broker,
no worker so the seeded jobs keep their states) in a temporary folder, and writes
<name>-<width>-<scheme>.png plus an index.html showing them all into var/screenshots/ (ignored by
git).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from html import escape
from pathlib import Path

from tests.browser.catalogue import PAGES, open_page, seed
from tests.browser.conftest import CHROMIUM_ARGS, chromium_path, log_in
from tests.browser.stack import ROOT, LiveStack, manage, prepare_database

__all__ = ["main", "take"]

logger = logging.getLogger("screenshots")

WIDTHS = (1280, 390)
SCHEMES = ("light", "dark")
HEIGHT = {1280: 800, 390: 844}


def take(stack: LiveStack, ids: dict[str, str], out: Path, only: set[str] | None = None, browser=None) -> list[Path]:
    """Take every screenshot (or those of the pages named in `only`) with `browser`, or with a
    Chromium of its own; returns the files written."""
    if browser is None:
        from playwright.sync_api import sync_playwright

        path = chromium_path()
        if path is None:
            raise SystemExit("Chromium not found: install Debian's chromium or set CHROMIUM_PATH.")
        with sync_playwright() as pw:
            own = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
            try:
                return take(stack, ids, out, only, own)
            finally:
                own.close()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for scheme in SCHEMES:
        for width in WIDTHS:
            contexts = {}
            for spec in PAGES:
                if only and spec.name not in only:
                    continue
                if spec.user not in contexts:
                    context = browser.new_context(
                        base_url=stack.url, viewport={"width": width, "height": HEIGHT[width]}, color_scheme=scheme,
                        reduced_motion="reduce",
                    )
                    context.set_default_timeout(30_000)
                    if spec.user is not None:
                        login = context.new_page()
                        log_in(login, spec.user)
                        login.close()
                    contexts[spec.user] = context
                page = contexts[spec.user].new_page()
                open_page(page, spec, ids)
                target = out / f"{spec.name}-{width}-{scheme}.png"
                page.screenshot(path=str(target), full_page=True)
                written.append(target)
                logger.info("wrote %s", target)
                page.close()
            for context in contexts.values():
                context.close()
    _index(out, written)
    return written


def _index(out: Path, files: list[Path]) -> None:
    rows = []
    for spec in PAGES:
        shots = [f for f in files if f.name.startswith(f"{spec.name}-") and f.name[len(spec.name) + 1].isdigit()]
        if not shots:
            continue
        cells = "".join(
            f'<figure><a href="{escape(f.name)}"><img src="{escape(f.name)}" loading="lazy" alt=""></a>'
            f"<figcaption>{escape(f.stem)}</figcaption></figure>"
            for f in shots
        )
        rows.append(f"<section><h2>{escape(spec.name)}</h2><div class=row>{cells}</div></section>")
    (out / "index.html").write_text(
        "<!doctype html><meta charset=utf-8><title>Screenshots</title><style>"
        "body{font:14px system-ui;margin:1rem}.row{display:flex;gap:1rem;align-items:flex-start;overflow-x:auto}"
        "figure{margin:0}img{max-width:420px;border:1px solid #ccc}</style>" + "".join(rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "screenshots", help="folder (default var/screenshots)")
    parser.add_argument("--only", nargs="*", metavar="NAME", help=f"only these pages: {' '.join(p.name for p in PAGES)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    unknown = set(args.only or ()) - {p.name for p in PAGES}
    if unknown:
        parser.error(f"unknown page(s): {', '.join(sorted(unknown))}")

    from notifications.broker import BrokerConfig, BrokerThread

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp, BrokerThread(BrokerConfig(port=0)) as broker:
        var = Path(tmp)
        template = prepare_database(var / "template")
        stack = LiveStack(var_dir=var / "var", broker_url=broker.url, template_db=template, worker=False, debug=False)
        stack.var_dir.mkdir(parents=True)
        manage(stack.env, "collectstatic", "--noinput", "--verbosity", "0", timeout=120)
        stack.start()
        try:
            ids = seed(stack)
            files = take(stack, ids, args.out, set(args.only or ()) or None)
        except BaseException:
            sys.stderr.write(stack.logs() + "\n")
            raise
        finally:
            stack.stop()
    logger.info("%d screenshots in %s (%.0f s); open %s", len(files), args.out, time.monotonic() - started,
                args.out / "index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`autolabel review` serves the FiftyOne App on the review queue (saved view `by-doubt`); headless
Chromium renders it with the pushed dataset.

The screenshot is kept in test-artifacts/ (or $AUTOLABEL_TEST_ARTIFACTS) for people to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from helpers import TESTS, labelled_run
from PIL import Image

from autolabel.review.database import free_port
from autolabel.review.push import push

ARTIFACTS = Path(os.environ.get("AUTOLABEL_TEST_ARTIFACTS", TESTS.parent / "test-artifacts"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                  "--window-size=1400,900", "--virtual-time-budget=30000"]


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise RuntimeError("no chromium: install Debian's `chromium` (`make test` does)")
    return found


def browse(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=120)


def wait_for_app(proc: subprocess.Popen, port: int, timeout: float = 90) -> str:
    """The URL `autolabel review` prints, once the App answers on it."""
    deadline = time.monotonic() + timeout
    url = None
    while url is None:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"review exited early: {proc.wait(5)}\n{proc.stderr.read()}")
        if match := re.match(r"App: (http://\S+)", line):
            url = match.group(1)
        assert time.monotonic() < deadline, "review printed no URL"
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return url
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the App on port {port} never answered"
        time.sleep(0.5)


def test_review_serves_the_app_on_the_by_doubt_view_and_chromium_shows_it(fo_db, tmp_path):
    name = "app_review"
    push([labelled_run(tmp_path)], name)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "autolabel", "review", name, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = wait_for_app(proc, port)
        assert url == f"http://localhost:{port}/datasets/{name}?view=by-doubt"
        for attempt in range(3):  # a loaded machine may still show the App's loading screen
            dom = browse(url, tmp_path / f"profile-dom-{attempt}", "--dump-dom")
            text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", "", dom.stdout,
                                                                      flags=re.S)))
            if "Pixelating" not in text:
                break
        assert "FiftyOne" in text and f" {name} " in text, text[:2000]
        for field in ("predictions", "reviewed", "predictions_explanation", "group_id"):
            assert f" {field} " in text, field
        # the App opened the saved view of the review queue: its stages, and every group in it
        assert " by-doubt " in text and " SortBy " in text, text[:2000]
        assert " 7 groups " in text, text[:2000]  # every image group x template
        for field in ("predictions_doubt", "predictions_group_doubt", "predictions_doubt_disagreement"):
            assert f" {field} " in text, field

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "review-app.png"
        shot.unlink(missing_ok=True)
        browse(url, tmp_path / "profile-shot", f"--screenshot={shot}")
        with Image.open(shot) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape[:2] == (900, 1400)
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, "a blank page, not the App"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()

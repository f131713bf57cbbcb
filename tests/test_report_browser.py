"""report.html in a real browser: headless Chromium opens it from disk (file://) and
every image in it has loaded. A screenshot is kept in test-artifacts/report.png."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from test_analyze import PLOTS, report_dir

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
# Runs after the load event (all images done or failed) and writes what it found into the DOM.
CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var out = document.createElement("pre");
  out.id = "raysl-check";
  out.textContent = JSON.stringify(images.map(function (img) {
    return {file: img.getAttribute("data-file"), complete: img.complete, width: img.naturalWidth,
            height: img.naturalHeight};
  }));
  document.body.appendChild(out);
});
</script>"""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium "
                                                              "(Debian package `chromium`)")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return report_dir(tmp_path_factory)


def test_every_image_loads_from_disk(report, tmp_path):
    page = (report / "report.html").read_text()
    assert page.count("</body>") == 1
    # the same page, next to the original (so relative links resolve alike), plus the check script
    checked = report / "report_check.html"
    checked.write_text(page.replace("</body>", CHECK + "</body>"))
    try:
        proc = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", checked.as_uri())
    finally:
        checked.unlink()
    found = re.search(r'<pre id="raysl-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the check script did not run (rc {proc.returncode}): {proc.stderr[-2000:]}"
    images = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert sorted(i["file"] for i in images) == sorted(PLOTS)
    for image in images:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image


def test_screenshot(report, tmp_path):
    from PIL import Image

    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = tmp_path / "report.png"
    proc = chromium(tmp_path, "--window-size=1280,2000", f"--screenshot={shot}", (report / "report.html").as_uri())
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        colors = image.convert("L").getextrema()
        assert colors[0] < 100 < colors[1], "the screenshot is blank"
    shutil.copy(shot, artifacts / "report.png")

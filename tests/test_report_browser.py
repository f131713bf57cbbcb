"""report.html in a real browser: headless Chromium opens it from disk (file://) and
every image in it has loaded; the best trial's leaderboard row stands out even when ASHA
stopped it early. A screenshot is kept in test-artifacts/report.png."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import HANG, REPO
from test_analyze import PLOTS, SCRIPTED_BEST_LR, report_dir, scripted_report_dir

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
                          capture_output=True, text=True, timeout=HANG)


@pytest.fixture(scope="module")
def report(tmp_path_factory, head) -> Path:
    return report_dir(tmp_path_factory, head.env)


# What the leaderboard rows and the best-config section look like once laid out and styled.
CHECK_BEST = """<script>
window.addEventListener("load", function () {
  function look(el) {
    var cs = getComputedStyle(el);
    return {color: cs.color, background: cs.backgroundColor, weight: cs.fontWeight, height: el.offsetHeight};
  }
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr[data-trial]"));
  var details = document.getElementById("full-config");
  var result = {
    rows: rows.map(function (tr) {
      var id = tr.querySelector('td[data-col="trial_id"]');
      var status = tr.querySelector('td[data-col="status"]');
      var tag = tr.querySelector(".tag");
      return {trial: tr.getAttribute("data-trial"), classes: tr.className, id_text: id.textContent,
              status: status.textContent, cell: look(status), row: look(tr),
              tag: tag ? {text: tag.textContent, width: tag.offsetWidth, height: tag.offsetHeight} : null};
    }),
    vs_base: Array.prototype.slice.call(document.querySelectorAll("#best-vs-base tbody tr")).map(function (tr) {
      return {key: tr.getAttribute("data-key"), height: tr.offsetHeight,
              cells: Array.prototype.slice.call(tr.cells).map(function (td) { return td.textContent; })};
    }),
    details: details ? {open: details.open, height: details.offsetHeight,
                        summary_height: details.querySelector("summary").offsetHeight,
                        pre_visible: details.querySelector("pre").checkVisibility()} : null
  };
  var out = document.createElement("pre");
  out.id = "raysl-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def run_check(report: Path, tmp_path: Path, script: str):
    """Open report.html with ``script`` added in headless Chromium; returns what the script found."""
    page = (report / "report.html").read_text()
    assert page.count("</body>") == 1
    # the same page, next to the original (so relative links resolve alike), plus the check script
    checked = report / "report_check.html"
    checked.write_text(page.replace("</body>", script + "</body>"))
    try:
        proc = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", checked.as_uri())
    finally:
        checked.unlink()
    found = re.search(r'<pre id="raysl-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the check script did not run (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&amp;", "&"))


def test_every_image_loads_from_disk(report, tmp_path):
    images = run_check(report, tmp_path, CHECK)
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


def test_best_row_stands_out_when_asha_stopped_it(tmp_path_factory, tmp_path, head):
    """The scripted ASHA experiment (test_analyze.py): ASHA stopped the trial with the best final
    objective. Its row is the one marked best, tagged, and not greyed like the other stopped row."""
    report = scripted_report_dir(tmp_path_factory, head.env)
    summary = json.loads((report / "summary.json").read_text())
    best = summary["best"]["trial_id"]
    found = run_check(report, tmp_path, CHECK_BEST)
    rows = {r["trial"]: r for r in found["rows"]}
    assert len(rows) == summary["experiments"][0]["trials"] == 4
    marked = [r for r in found["rows"] if "best" in r["classes"].split()]
    assert [r["trial"] for r in marked] == [best]
    mine = rows[best]
    assert mine["status"] == "stopped" and mine["id_text"].startswith(best)
    assert mine["tag"] and mine["tag"]["text"] == "★ best" and mine["tag"]["width"] > 0 and mine["tag"]["height"] > 0
    greyed = [r for r in found["rows"] if r["status"] == "stopped" and r["trial"] != best]
    assert len(greyed) == 1 and greyed[0]["cell"]["color"] == "rgb(119, 119, 119)"  # tr.stopped's grey
    finished = [r for r in found["rows"] if r["status"] == "finished"]
    assert mine["cell"]["color"] not in {greyed[0]["cell"]["color"], finished[0]["cell"]["color"]}
    assert mine["cell"]["weight"] == "600" and mine["row"]["background"] not in ("rgba(0, 0, 0, 0)",
                                                                                 greyed[0]["row"]["background"])
    # the best config: the searched keys against the base on show, the full YAML folded away
    assert [r["key"] for r in found["vs_base"]] == ["method.temperature", "optim.lr", "optim.weight_decay"]
    assert all(r["height"] > 0 for r in found["vs_base"])
    assert found["vs_base"][1]["cells"][1:] == [str(SCRIPTED_BEST_LR), "0.002"]
    details = found["details"]
    assert details["open"] is False and details["pre_visible"] is False
    assert 0 < details["height"] == details["summary_height"] < 60  # only the "full config" line shows

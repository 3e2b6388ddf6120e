"""analysis.report: `scaling report`'s self-contained HTML page, checked as text and in a real browser."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
from analysis_fakes import KaplanLaw, kaplan_records, write_records

from analysis.report import provenance, report_html, write_report
from scaling.cli import main

SHIPPED = Path(__file__).resolve().parents[1] / "results"
# Chromium as Debian ships it (`apt-get install chromium`: .ci/run installs it), or another named by
# SCALING_BROWSER. Flags: no sandbox (root in a container), no GPU, and nothing that reaches the network.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Six fake Kaplan runs with provenance in their config.json and two figures."""
    root = tmp_path_factory.mktemp("results")
    folder = write_records(kaplan_records(KaplanLaw(), n_params_nonembed=np.geomspace(1e5, 1e7, 3),
                                          tokens=[1e9, 1e10], n_evals=4), root, sweep="fake")
    for i, config_file in enumerate(sorted(folder.glob("runs/*/config.json"))):
        text = config_file.read_text().rstrip()[:-1]  # the closing brace
        config_file.write_text(text + f', "git_commit": "abc{i % 2}", "host": "node-1", '
                                      '"versions": {"jax": "0.7.0", "python": "3.11.9"}}')
    (folder / "figures").mkdir()
    for name, slope in (("first", 1), ("second", -1)):
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([0, 1], [0, slope], color="tab:red", linewidth=4)
        fig.savefig(folder / "figures" / f"{name}.png", dpi=50)
        plt.close(fig)
    return folder


def test_report_holds_runs_fits_figures_and_provenance(sweep):
    page = report_html(sweep, bootstrap=20)
    runs_table = page.split("<h2>Runs</h2>")[1].split("</table>")[0]
    assert runs_table.count("<tr>") == 1 + 6  # the header and one row per run
    fits = page.split("<h2>Fits</h2>")[1].split("</table>")[0]
    for law in ("L(N)", "L(D)", "L(N,D)"):
        assert f"<td>{law}</td>" in fits
    assert re.search(r"<td>\[[-0-9.e]+, [-0-9.e]+\]</td>", fits)  # a 95% interval
    assert page.count("<img ") == 2 and page.count('src="data:image/png;base64,') == 2
    assert "http://" not in page and "https://" not in page  # nothing from the network
    assert "<script" not in page
    frame = provenance(sweep).set_index(["field", "value"])["runs"]
    assert frame[("git_commit", "abc0")] == 3 and frame[("git_commit", "abc1")] == 3
    assert frame[("host", "node-1")] == 6 and frame[("jax", "0.7.0")] == 6
    assert "<td>abc1</td>" in page.split("<h2>Provenance</h2>")[1]


def test_report_is_the_same_bytes_from_the_same_records(sweep, tmp_path):
    first = write_report(sweep, bootstrap=20, output=tmp_path / "a.html").read_bytes()
    second = write_report(sweep, bootstrap=20, output=tmp_path / "b.html").read_bytes()
    assert first == second


def test_report_of_the_shipped_emergence_sweep_has_its_transitions(tmp_path):
    page = report_html(SHIPPED / "emergence", bootstrap=0)
    transitions = page.split("<h2>Transitions</h2>")[1].split("</table>")[0]
    assert transitions.count("<td>exact_match</td>") == 5 and transitions.count("<td>target_logprob</td>") == 5
    assert page.count("<img ") == len(list((SHIPPED / "emergence" / "figures").glob("*.png")))
    assert "<td>git_commit</td>" in page


def test_report_command_writes_the_page_and_refuses_a_missing_folder(sweep, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["report", str(sweep), "--bootstrap", "0", "--output", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results folder at" in err
    parent = tmp_path / "results"
    for name in ("one", "two"):
        write_records(kaplan_records(KaplanLaw(), n_params_nonembed=[1e5, 1e6], tokens=[1e9], n_evals=3), parent,
                      sweep=name)
        shutil.copytree(sweep / "figures", parent / name / "figures")
    assert main(["report", str(parent), "--bootstrap", "0"]) == 0
    assert capsys.readouterr().out.split() == [str(parent / name / "report.html") for name in ("one", "two")]
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no runs under" in err


def _browser() -> str | None:
    named = os.environ.get("SCALING_BROWSER")
    return named if named else next((path for name in BROWSERS if (path := shutil.which(name))), None)


# Counts the page's images that decoded (naturalWidth > 0) into the title, which --dump-dom prints.
_COUNT_IMAGES = ("<script>window.addEventListener('load', () => { const all = [...document.images]; "
                 "document.title = 'images ' + all.filter(i => i.complete && i.naturalWidth > 0).length "
                 "+ ' of ' + all.length; });</script>")


def test_report_renders_in_a_browser_with_every_image(sweep, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no browser: none of {', '.join(BROWSERS)} on PATH and SCALING_BROWSER unset "
                    "(.ci/run installs Debian's chromium: apt-get install chromium)")
    page = write_report(sweep, bootstrap=0, output=tmp_path / "report.html")
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _COUNT_IMAGES + "</body>"))

    def render(*flags, url):
        return subprocess.run([browser, *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *flags, url],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)

    dom = render("--dump-dom", url=probe.as_uri()).stdout
    assert "<title>images 2 of 2</title>" in dom, dom[:300]
    shot = tmp_path / "shot.png"
    render(f"--screenshot={shot}", "--window-size=1000,1400", url=page.as_uri())
    pixels = matplotlib.image.imread(shot)[..., :3]
    ink = (pixels < 0.9).any(axis=-1).mean()  # the share of pixels that are not (near) white
    assert pixels.shape[:2] == (1400, 1000) and 0.01 < ink < 0.9

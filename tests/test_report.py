"""`edgekit bench -o DIR` and `edgekit report`: results from real benchmarks of real artifacts (a
tiny ResNet in fp32 and INT8) become a table, Markdown, CSV, one self-contained HTML page and PNGs."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from artifacts import tiny_pair

from edgekit.benchmarks.plots import pareto_front
from edgekit.benchmarks.report import COLUMNS, row_cells

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# one xdist worker builds the module's fixtures once, instead of each worker its own
pytestmark = pytest.mark.xdist_group("report")


def ok(result, code: int = 0) -> None:
    detail = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == code, f"exit {result.returncode}\n{detail}"
    assert "Traceback" not in result.stdout + result.stderr


def fails_plainly(result) -> str:
    """Exit 2 with one sentence on stderr, no traceback; returns the sentence."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("edgekit: error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    return result.stderr


@pytest.fixture(scope="module")
def results(edgekit, tmp_path_factory) -> Path:
    """Four records from three real `bench` runs appended to one results dir: fp32 and INT8 with
    accuracy, INT8 without --eval, and a failed row (a worker that cannot finish in 0.05 s)."""
    root = tmp_path_factory.mktemp("report")
    pair = tiny_pair(root)
    out = root / "results"
    ok(edgekit("bench", pair.fp32, pair.int8, "--runs", 20, "--eval", pair.eval, "-o", out))
    ok(edgekit("bench", pair.int8, "--runs", 20, "-o", out))
    ok(edgekit("bench", pair.int8, "--timeout", 0.05, "-o", out), code=1)  # a failed row exits 1
    return out


def records(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]


def test_bench_appends_one_json_line_per_record(results):
    recs = records(results)
    assert [Path(r["artifact"]).name for r in recs] == ["tiny-fp32", "tiny-int8", "tiny-int8", "tiny-int8"]
    assert [r["ok"] for r in recs] == [True, True, True, False]
    assert recs[0]["accuracy"]["top1"] == 1.0  # the eval labels are the fp32 model's own answers
    assert recs[1]["accuracy"]["samples"] == 48 and "accuracy" not in recs[2]
    assert "timed out" in recs[3]["error"]
    assert [p.name for p in results.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_report_writes_markdown_csv_html_and_plots(results, edgekit, tmp_path):
    r = edgekit("report", results, "--format", "md,csv,html", "--plot", "-o", tmp_path)
    ok(r)
    assert "tiny-fp32" in r.stdout and "failed: timed out" in r.stdout  # the terminal table
    assert "Left out of the latency-vs-accuracy plot" in r.stdout
    names = {"report.md", "report.csv", "report.html", "latency_accuracy.png", "latency_distribution.png"}
    assert names <= {p.name for p in tmp_path.iterdir()}

    md = (tmp_path / "report.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("| artifact"))
    for col in ("runtime", "batch", "median ms", "p99 ms", "CV", "size", "peak RSS", "accuracy"):
        assert f"| {col} |" in header, col
    rows = [line for line in md if line.startswith("| /")]  # the artifacts' absolute paths
    assert len(rows) == 4
    assert "top-1 100.00 %" in rows[0] and "(n=48)" in rows[0]  # the metric and its sample count
    assert "not measured (no --eval)" in rows[2]
    assert "failed: timed out after 0.05 s" in rows[3]

    table = list(csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text())))
    assert len(table) == 4
    recs = records(results)
    assert float(table[1]["median_ms"]) == pytest.approx(recs[1]["latency"]["median_ms"])
    assert [t["accuracy_metric"] for t in table] == ["top1", "top1", "not measured", "not measured"]
    assert table[0]["accuracy_samples"] == "48" and table[3]["ok"] == "False"
    assert "timed out" in table[3]["error"] and table[3]["median_ms"] == ""


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag in ("link", "script") or (tag == "img" and not a["src"].startswith("data:")):
            self.external.append(tag)

    def handle_data(self, data):
        self.cells.append(data)


def test_html_is_one_self_contained_page_with_the_table_and_plots(results, edgekit, tmp_path):
    ok(edgekit("report", results, "--format", "html", "--plot", "-o", tmp_path))
    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    assert page.external == []  # inline CSS, no scripts, images as data URIs
    text = " ".join(page.cells)
    assert "median ms" in text and "top-1 100.00 %, top-5 100.00 % (n=48)" in text
    assert "failed: timed out after 0.05 s" in text
    assert len(page.images) == 2
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    first = base64.b64decode(page.images[0].split(",", 1)[1])
    assert first == (tmp_path / "latency_accuracy.png").read_bytes()


class _Rendered(HTMLParser):
    """Tables, header and body rows (cell texts) and img sources of a DOM that Chromium serialised."""

    def __init__(self):
        super().__init__()
        self.tables = 0
        self.header: list[str] = []
        self.rows: list[list[str]] = []
        self.images: list[str] = []
        self._in_body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables += 1
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            (self.header if tag == "th" else self.rows[-1]).append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def chromium_dom(page: Path, tmp_path: Path) -> str:
    """The DOM headless Chromium builds from PAGE, serialised (`--dump-dom`). Its profile and HOME
    are under TMP_PATH; on a timeout the whole process group is killed."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed; `make test` installs it", pytrace=False)
    home = tmp_path / "chromium-home"
    home.mkdir()
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",  # needed as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={home / 'profile'}",
        "--dump-dom",
        page.as_uri(),
    ]
    env = dict(os.environ, HOME=str(home))  # chromium also writes ~/.pki
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the browser and its helpers
        out, err = proc.communicate()
        timed_out = True
    if timed_out:
        pytest.fail(f"chromium did not render {page} within 60 s\nstderr:\n{err[-3000:]}", pytrace=False)
    assert proc.returncode == 0 and "<table" in out, f"exit {proc.returncode}\nstderr:\n{err[-3000:]}"
    return out


def test_html_renders_in_headless_chromium_with_the_table_and_plots(results, edgekit, tmp_path):
    ok(edgekit("report", results, "--format", "html", "--plot", "-o", tmp_path))
    dom = _Rendered()
    dom.feed(chromium_dom(tmp_path / "report.html", tmp_path))
    assert dom.tables == 1 and dom.header == list(COLUMNS)
    recs = records(results)
    assert len(dom.rows) == len(recs)  # one row per record, inside the table's body
    for row, rec in zip(dom.rows, recs, strict=True):
        assert Path(row[0]).name in ("tiny-fp32", "tiny-int8") and row[1].split()[0] == rec["runtime"]
        # every cell where the report put it; a failed row's reason spans the numbers' columns
        assert row == (row_cells(rec) if rec["ok"] else row_cells(rec)[:5]), row
    assert "top-1 100.00 %, top-5 100.00 % (n=48)" in dom.rows[0]
    assert dom.rows[3][4] == "failed: timed out after 0.05 s"
    assert len(dom.images) == 2
    for src, name in zip(dom.images, ("latency_accuracy.png", "latency_distribution.png"), strict=True):
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1]) == (tmp_path / name).read_bytes(), name


def test_pngs_are_real_images(results, edgekit, tmp_path):
    ok(edgekit("report", results, "--plot", "-o", tmp_path))
    for name in ("latency_accuracy.png", "latency_distribution.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 400 and height >= 150, (name, width, height)


def test_report_reads_the_json_list_that_bench_json_writes(results, edgekit, tmp_path):
    listed = tmp_path / "bench.json"
    listed.write_text(json.dumps(records(results)[:2], indent=2))
    ok(edgekit("report", listed, "--format", "md"))
    rows = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| /")]
    assert len(rows) == 2  # written next to the file


def test_missing_matplotlib_is_one_sentence_naming_the_extra(results, edgekit, tmp_path):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError, as if not installed.
    code = "import sys; sys.modules['matplotlib'] = None; from edgekit.cli import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "report", str(results), "--plot", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        env=edgekit.env(),
        timeout=120,
    )
    assert "edgekit[plots]" in fails_plainly(proc)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "do not exist"),
        ("", "is empty"),
        ("{not json\n", "line 1 of"),
        ('{"artifact": "x"}\n', "not a benchmark record"),
    ],
)
def test_bad_results_input_is_one_sentence(content, message, edgekit, tmp_path):
    path = tmp_path / "results.jsonl"
    if content is not None:
        path.write_text(content)
    assert message in fails_plainly(edgekit("report", path))


def test_directory_without_results_and_unknown_format(results, edgekit, tmp_path):
    assert "results.jsonl does not exist" in fails_plainly(edgekit("report", tmp_path))
    assert "unknown report format 'pdf'" in fails_plainly(edgekit("report", results, "--format", "md,pdf"))


def test_bench_output_that_is_a_file_is_refused(results, edgekit, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    artifact = records(results)[0]["artifact"]
    r = edgekit("bench", artifact, "--runs", 10, "-o", not_a_dir)
    assert "is an existing file" in fails_plainly(r)


def test_pareto_front_keeps_only_undominated_points():
    #          fast, bad    slow, good   dominated    ties the first   fastest, worst
    points = [(1.0, 0.90), (2.0, 0.95), (2.5, 0.93), (1.0, 0.90), (0.5, 0.50)]
    assert pareto_front(points) == [True, True, False, True, True]
    assert pareto_front([(1.0, 0.9), (1.0, 0.8)]) == [True, False]  # same speed, less accurate
    assert pareto_front([]) == []


def test_markdown_escapes_pipes_in_reasons(results, edgekit, tmp_path):
    recs = records(results)
    bad = dict(recs[3], error="worker died (exit 1): a | b")
    (tmp_path / "r.jsonl").write_text(json.dumps(bad) + "\n")
    ok(edgekit("report", tmp_path / "r.jsonl", "--format", "md"))
    row = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| /"))
    assert re.search(r"a \\\| b", row)

"""The benchmark machinery measures what it says (fast checks; the benchmarks themselves are `make bench`)."""

import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import report  # noqa: E402


def test_measure_reports_the_child_peak_rss_not_the_parent():
    small = common.measure([sys.executable, "-c", "pass"]).check()
    big = common.measure([sys.executable, "-c", "import numpy; a = numpy.ones(300 * 2**20 // 8); print('{}')"]).check()
    assert big.peak_rss_mb - small.peak_rss_mb > 250, (small.peak_rss_mb, big.peak_rss_mb)
    assert big.returncode == 0 and big.json_tail() == {} and big.cpu_s > 0


def test_synthetic_rasters_are_continuous_across_write_blocks():
    whole = common.clean_mask(0, 0, 600, 700)
    part = common.clean_mask(300, 200, 300, 500)
    np.testing.assert_array_equal(whole[300:600, 200:700], part)
    assert 0.02 < whole.mean() < 0.3
    field = common.smooth_field(0, 0, 200, 200)
    np.testing.assert_allclose(field[100:, 50:], common.smooth_field(100, 50, 100, 150))


def test_report_tables_escape_pipes_and_name_the_command():
    result = {
        "command": ".venv/bin/python benchmarks/bench_seams.py --side 64", "when": "today",
        "machine": {"cpu": "x", "cores": 2, "memory_gb": 1.0, "load_average_at_start": [0, 0, 0]},
        "rows": [{"model": "m", "variant": "v", "overlap": 0, "iou_seam": 0.5, "mean_abs_error_seam": 0.1}],
    }
    text = report.seams_table(result)
    assert "mean \\|Δp\\|" in text and "bench_seams.py --side 64" in text
    assert text.splitlines()[2].startswith("| m | v | 0 | 0.5 |")


def test_report_replaces_only_marked_regions(tmp_path, monkeypatch):
    doc = tmp_path / "perf.md"
    doc.write_text("intro\n<!-- bench:seams -->\nold\n<!-- /bench:seams -->\nkept\n")
    monkeypatch.setattr(report, "load", lambda name: None if name != "seams" else {
        "command": "c", "when": "w", "machine": {"cpu": "x", "cores": 1, "memory_gb": 1},
        "rows": [{"model": "m"}]})
    assert report.update(doc) == ["seams"]
    text = doc.read_text()
    assert text.startswith("intro\n<!-- bench:seams -->\n| model") and "old" not in text
    assert text.endswith("<!-- /bench:seams -->\nkept\n")

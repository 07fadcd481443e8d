"""Render benchmark results (benchmarks/results/*.json) as the tables of docs/performance.md.

    .venv/bin/python benchmarks/report.py            # rewrite the marked regions of docs/performance.md
    .venv/bin/python benchmarks/report.py --print    # print the tables instead

Only text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers is replaced, so the
prose around the tables (and other people's sections) stays as written. Each table is followed by
the command that produced it, the date and the machine, all taken from the results file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

DOC = common.REPO / "docs" / "performance.md"


def load(name: str) -> dict | None:
    path = common.RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def provenance(result: dict) -> str:
    m = result["machine"]
    loads = ", ".join(f"{when} {m[f'load_average_at_{when}']}" for when in ("start", "end")
                      if f"load_average_at_{when}" in m)
    return (f"\n\n<sub>`{result['command']}` — finished {result['when']}, {m['cpu']}, {m['cores']} cores, "
            f"{m['memory_gb']} GB; load average (1/5/15 min) at {loads} (a shared machine).</sub>")


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    head = "| " + " | ".join(esc(title) for _, title in columns) + " |"
    lines = [head, "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(esc(fmt(r.get(key))) for key, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def side_label(side: int) -> str:
    return f"{side // 1000}k²" if side % 1000 == 0 else f"{side}²"


def vectorize_table(result: dict) -> str:
    rows = [dict(r, size=side_label(r["side"])) for r in result["rows"]]
    startup = result.get("geoseg_startup", {})
    text = table(rows, [
        ("mask", "mask"), ("size", "size"), ("tool", "tool"), ("wall_s", "wall s"),
        ("mpx_per_s", "Mpx/s"), ("x_gdal_throughput", "× GDAL (wall)"), ("cpu_s", "CPU s"),
        ("x_gdal_cpu", "× GDAL (CPU)"), ("peak_rss_mb", "peak RSS MB"), ("features", "polygons"),
        ("same_count_as_gdal", "same count"), ("area_vs_gdal", "area vs GDAL"),
        ("in_process_s", "geoseg in-process s"),
    ])
    if startup:
        text += (f"\n\n`geoseg --version` alone (start-up, imports): {fmt(startup['wall_s'])} s wall, "
                 f"{fmt(startup['cpu_s'])} s CPU, {fmt(startup['peak_rss_mb'])} MB peak RSS; "
                 f"gdal_polygonize.py: GDAL {result.get('gdal_polygonize')}.")
    return text + provenance(result)


def engine_table(result: dict) -> str:
    rows = [dict(r, size=side_label(r["side"])) for r in result["rows"]]
    return table(rows, [
        ("engine", "engine"), ("size", "size"), ("wall_s", "wall s"), ("cpu_s", "CPU s"),
        ("peak_rss_mb", "peak RSS MB"), ("rss_vs_smallest", "RSS ÷ 5k² RSS"),
        ("peak_rss_infer_mb", "peak MB: tiles→probabilities"), ("peak_rss_vectorize_mb", "peak MB: vectorise"),
        ("peak_rss_write_mb", "peak MB: write"), ("tiles", "tiles"),
        ("model_s", "model s"), ("infer_s", "tiles→probabilities s"), ("vectorize_s", "vectorise s"),
        ("gpkg_write_s", "GeoPackage s"), ("skipped", "note"),
    ]) + provenance(result)


def seams_table(result: dict) -> str:
    return table(result["rows"], [
        ("model", "model"), ("variant", "tiling"), ("overlap", "overlap px"),
        ("iou_seam", "IoU ±32 px of seams"), ("iou_interior", "IoU interior"),
        ("mean_abs_error_seam", "mean |Δp| at seams"), ("max_abs_error_seam", "max |Δp| at seams"),
        ("objects", "objects"), ("objects_untiled", "objects untiled"),
        ("truth_iou_seam", "IoU vs truth, seams"), ("truth_iou_interior", "IoU vs truth, interior"),
    ]) + provenance(result)


def end_to_end_table(result: dict) -> str:
    head = f"Model `{result['model']}`, query \"{result['query']}\".\n\n"
    return head + table(result["rows"], [
        ("scene", "scene"), ("megapixels", "MP"), ("pixel_m", "pixel m"), ("threads", "torch threads"),
        ("run", "run"), ("seconds", "s"), ("mpx_per_s", "MP/s"), ("km2_per_h", "km²/h"),
        ("cpu_per_wall", "CPU / wall"), ("peak_rss_mb", "peak RSS MB"), ("tiles", "tiles"), ("model_s", "in model s"),
        ("overhead_fraction", "engine overhead"), ("load_s", "model load s"), ("features", "polygons"),
    ]) + provenance(result)


RENDERERS = {
    "vectorize": vectorize_table,
    "engine": engine_table,
    "engine_objects": engine_table,
    "seams": seams_table,
    "end_to_end": end_to_end_table,
}


def update(doc: Path = DOC) -> list[str]:
    """Replace each marked region whose results exist; return the names replaced."""
    text = doc.read_text()
    done = []
    for name, render in RENDERERS.items():
        result = load(name)
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(\n<!-- /bench:{name} -->)", re.S)
        if result is None or not pattern.search(text):
            continue
        text = pattern.sub(lambda m, r=result, f=render: m.group(1) + f(r) + m.group(2), text)
        done.append(name)
    doc.write_text(text)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--print", action="store_true", help="print the tables, change nothing")
    args = ap.parse_args()
    if args.print:
        for name, render in RENDERERS.items():
            result = load(name)
            if result:
                print(f"## {name}\n\n{render(result)}\n")
        return
    print(f"updated in {DOC.relative_to(common.REPO)}: {', '.join(update()) or 'nothing'}")


if __name__ == "__main__":
    main()

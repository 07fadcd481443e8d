"""Every option of a run, declared once: type, default, range or choices, group, help, commands.

`RunOptions` is the one typed model. Each of its fields that a user can set carries an `Option`
declaration; from these the CLI builds its Click options (geoseg_cli.options), the batch reads
job options (`parse_options`), and `RunOptions(...)` itself checks what a Python caller passes,
so all three share the same defaults, ranges and messages.

Groups follow the flow of a run: read -> tile -> model -> vectorise -> write.

This module imports neither torch nor click nor GDAL: the CLI imports it to build `--help`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from geoseg.errors import InputError

READ, TILE, MODEL, VECTORISE, WRITE = "read", "tile", "model", "vectorise", "write"
GROUPS = (READ, TILE, MODEL, VECTORISE, WRITE)

# The commands whose run an option can change (a command's Click options are generated from this).
SEGMENT, CHANGE, CHAT, VECTORIZE = "segment", "change", "chat", "vectorize"
MODEL_RUNS = (SEGMENT, CHANGE, CHAT)

BLEND_MODES = ("cosine", "average", "none")  # geoseg.run.stitch implements them
ALIGN_TO = ("before", "after")
RESAMPLING = ("nearest", "bilinear", "cubic")
UNKNOWN_QUERY = ("warn", "error")  # what a query the model was not trained on does (geoseg.models.concepts)
OUTPUT_FORMATS = ("gpkg", "parquet", "fgb", "geojson")  # geoseg.io.formats writes them
EVAL_SCALE_MAX = 4.0  # geoseg evaluate --scale takes a factor in (0, this]


# ---------------------------------------------------------------- value parsers
# Each takes what a job file, a --set or a Python caller gives (text, number, typed value) and
# returns the typed value, or raises ValueError with the reason a user can act on.


def to_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("expected a whole number")
    return int(value)


def to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    return float(value)


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on", ""):  # "" : a bare `--set fill-holes` or an empty CSV flag
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def to_bands(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        bands = tuple(to_int(b) for b in items)
    except ValueError:
        raise ValueError("give 1-based band numbers separated by commas, e.g. 3,2,1") from None
    if not bands or min(bands) < 1:
        raise ValueError("band numbers start at 1, e.g. 3,2,1")
    return bands


def to_nodata(value: Any) -> float:
    try:
        return to_float(value)
    except ValueError:
        raise ValueError("give a number or 'nan'") from None


@dataclass(frozen=True)
class MinArea:
    """`--min-area`: whole pixels (20, 20px) or square metres (50m2); at most one is non-zero."""

    px: int = 0
    m2: float = 0.0

    @classmethod
    def parse(cls, value: Any) -> MinArea:
        if isinstance(value, MinArea):
            return value
        text = str(value).strip().lower().replace(" ", "")
        try:
            if text.endswith("m2"):
                area = cls(m2=float(text[:-2]))
            else:
                pixels = float(text.removesuffix("px"))
                if not pixels.is_integer():
                    raise ValueError
                area = cls(px=int(pixels))
        except ValueError:
            raise ValueError("give whole pixels (20, 20px) or square metres (50m2)") from None
        if area.px < 0 or not area.m2 >= 0:
            raise ValueError("an area cannot be negative")
        return area

    def __str__(self) -> str:
        return f"{self.m2:g}m2" if self.m2 else str(self.px)


def to_gsd(value: Any) -> str | float:
    """auto | native | a positive number of metres (geoseg.io.gsd parses it)."""
    from geoseg.io.gsd import parse_gsd  # imported here: pyproj is not needed to build --help

    try:
        return parse_gsd(value)
    except InputError as e:  # its message starts with "--gsd VALUE: "; the callers name the option
        raise ValueError(str(e).partition(": ")[2]) from None


# ---------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Option:
    """How one RunOptions field is set from outside: its name, kind, limits and help."""

    field: str  # the RunOptions attribute
    name: str  # the CLI and job spelling (tile-size)
    group: str  # one of GROUPS
    help: str
    kind: str  # int | float | flag | text | path | choice | value (parsed by `parser`)
    default: Any = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    parser: Callable[[Any], Any] | None = None  # kind "value"
    type_name: str = "text"  # kind "value": what --help calls it
    short: str | None = None  # e.g. -b
    commands: tuple[str, ...] = MODEL_RUNS

    def convert(self, value: Any) -> Any:
        """The typed value, or ValueError saying what is wrong."""
        if self.kind == "flag":
            return to_bool(value)
        if self.kind == "int":
            return self._in_range(to_int(value))
        if self.kind == "float":
            return self._in_range(to_float(value))
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"expected one of {', '.join(self.choices)}")
            return value
        if self.kind == "path":
            return Path(value)
        if self.kind == "value":
            assert self.parser is not None  # value options always declare one (value())
            return self.parser(value)
        return str(value)

    def _in_range(self, number: float) -> Any:
        if self.low is not None and not number >= self.low:
            raise ValueError(f"must be at least {self.low:g}")
        if self.high is not None and not number <= self.high:
            raise ValueError(f"must be at most {self.high:g}")
        return number

    def record(self, value: Any) -> Any:
        """The value as the provenance record and the job key store it (JSON)."""
        if isinstance(value, (Path, MinArea)):
            return str(value)
        return list(value) if isinstance(value, tuple) else value


def _declare(default: Any, group: str, help: str, kind: str, **spec: Any) -> Any:
    return field(default=default, metadata={"option": {"group": group, "help": help, "kind": kind, **spec}})


def number(default: float | None, group: str, help: str, *, low: float | None = None, high: float | None = None,
           **spec: Any) -> Any:
    return _declare(default, group, help, "float", low=low, high=high, **spec)


def whole(default: int | None, group: str, help: str, *, low: int | None = None, **spec: Any) -> Any:
    return _declare(default, group, help, "int", low=low, **spec)


def flag(group: str, help: str, **spec: Any) -> Any:
    return _declare(False, group, help, "flag", **spec)


def text(group: str, help: str, default: str | None = None, **spec: Any) -> Any:
    return _declare(default, group, help, "text", **spec)


def choice(default: str | None, choices: tuple[str, ...], group: str, help: str, **spec: Any) -> Any:
    return _declare(default, group, help, "choice", choices=choices, **spec)


def path(group: str, help: str, **spec: Any) -> Any:
    return _declare(None, group, help, "path", **spec)


def value(default: Any, group: str, help: str, parser: Callable[[Any], Any], type_name: str, **spec: Any) -> Any:
    return _declare(default, group, help, "value", parser=parser, type_name=type_name, **spec)


WITH_VECTORIZE = (*MODEL_RUNS, VECTORIZE)


@dataclass
class RunOptions:
    """Everything a run can be told. Construct it directly from Python (values are checked here,
    e.g. RunOptions(threshold=0.6, min_area="50m2")), or let the CLI and the batch fill it."""

    # read
    bands: tuple[int, ...] | None = value(
        None, READ, "1-based bands to read, in model order (e.g. 3,2,1). Default: the first three.",
        to_bands, "bands", short="-b")
    nodata: float | None = value(None, READ, "Override the input nodata value.", to_nodata, "number")
    pixel_coords: bool = flag(READ, "Accept rasters without georeferencing (polygons in pixel units).",
                              commands=(SEGMENT, CHAT, VECTORIZE))
    gsd: str | float = value(
        "auto", READ, "Ground resolution to read at: auto reads scenes much finer than the model's range at its "
        "finest resolution; native keeps the file's pixels; a number forces that many metres.", to_gsd, "gsd")
    asset: str | None = text(
        READ, "STAC Item inputs: the asset to read (default: `visual`, else the red, green and blue assets stacked); "
        "three names separated by commas (e.g. B04,B03,B02) stack single-band assets.", commands=(SEGMENT, CHANGE))
    hash_inputs: bool = flag(
        READ, "Also record the sha256 of remote inputs (URLs, s3://...): reads each whole file once more. Local "
        "files are always hashed; a remote one is otherwise recorded by its URL, size, ETag and Last-Modified.",
        commands=(SEGMENT, CHANGE, VECTORIZE))
    align_to: str = choice("before", ALIGN_TO, READ, "Which date's grid the other is warped onto.",
                           commands=(CHANGE,))
    resampling: str = choice("bilinear", RESAMPLING, READ, "Resampling used to warp the other date.",
                             commands=(CHANGE,))
    # tile
    tile_size: int | None = whole(None, TILE, "Tile size in pixels (default: the model's native size).", low=16)
    overlap: int | None = whole(None, TILE, "Overlap between tiles in pixels (default: the model's).", low=0)
    blend: str = choice("cosine", BLEND_MODES, TILE, "How overlapping tiles are combined.")
    workers: int = whole(2, TILE, "Reader threads.", low=1)
    # model
    model: str | None = text(MODEL, "Registry name, checkpoint directory or Hugging Face hub id (see `geoseg models`).")
    device: str = text(MODEL, "auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps.", default="auto")
    allow_pickle: bool = flag(MODEL, "Allow pickled .bin checkpoints (loaded with weights_only=True).")
    batch_size: int | None = whole(None, MODEL, "Tiles per model call (default: from device memory).", low=1)
    unknown_query: str = choice(
        "warn", UNKNOWN_QUERY, MODEL, "A query close to no concept the model was trained on: warn (one line on stderr, "
        "recorded in the provenance) or error (exit 2, nothing written). Models without a concept list are not checked.",
        commands=(SEGMENT, CHANGE))
    dilate_px: int = whole(2, MODEL, "Misregistration tolerance in pixels (single-date models).", low=0,
                           name="dilate", commands=(CHANGE,))
    # vectorise
    threshold: float = number(0.5, VECTORISE, "Probability at or above which a pixel belongs to the target.",
                              low=0, high=1, commands=WITH_VECTORIZE)
    min_area: MinArea = value(
        MinArea(), VECTORISE, "Drop polygons smaller than this: pixels (e.g. 20 or 20px) or square metres (e.g. 50m2).",
        MinArea.parse, "area", commands=WITH_VECTORIZE)
    simplify: float = number(0.0, VECTORISE, "Topology-preserving simplification tolerance, in pixels.", low=0,
                             commands=WITH_VECTORIZE)
    fill_holes: bool = flag(VECTORISE, "Fill holes inside polygons.", commands=WITH_VECTORIZE)
    # write
    output_format: str | None = choice(
        None, OUTPUT_FORMATS, WRITE, "Output format: gpkg (GeoPackage, a layer per query), parquet (GeoParquet), "
        "fgb (FlatGeobuf), geojson; the last three hold one table with a `layer` column. Default: from the "
        "extension of -o.", name="format", commands=WITH_VECTORIZE)
    overwrite: bool = flag(WRITE, "Replace an existing output file.", commands=WITH_VECTORIZE)
    append: bool = flag(WRITE, "Add to an existing output: new layers to a GeoPackage, new layers' rows to a "
                        ".parquet/.fgb/.geojson file geoseg wrote.", commands=WITH_VECTORIZE)
    layer: str | None = text(WRITE, "Layer name; in .parquet/.fgb/.geojson, the `layer` column's value "
                             "(default: a slug of the query).", commands=(SEGMENT, CHANGE, VECTORIZE))
    probabilities: Path | None = path(WRITE, "Also write the blended probabilities as a COG (uint8, scale 1/254).",
                                      commands=(SEGMENT, CHANGE))
    mask_out: Path | None = path(WRITE, "Also write the thresholded mask as a COG (1 = target, 0 = not, 255 = nodata).",
                                 commands=(SEGMENT, CHANGE))
    dst_crs: str | None = text(WRITE, "CRS of the layer when scenes differ (default: the first scene's).",
                               commands=(SEGMENT,))
    # not an option: the CLI turns it off with -q, the batch always
    progress: bool = True

    def __post_init__(self) -> None:
        for option in OPTIONS.values():
            given = getattr(self, option.field)
            if given is None:  # not set: the default (None: the model or the scene decides)
                setattr(self, option.field, option.default)
            else:
                setattr(self, option.field, checked(option, given, "RunOptions"))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "", **fixed: Any) -> RunOptions:
        """RunOptions from option names and values as a job file or --set gives them."""
        return cls(**fixed, **parse_options(values, where))

    def record(self) -> dict[str, Any]:
        """Every field as JSON, for the provenance record and the batch job key."""
        out = {}
        for f in fields(self):
            option = OPTIONS_BY_FIELD.get(f.name)
            out[f.name] = option.record(getattr(self, f.name)) if option else getattr(self, f.name)
        return out


def _option(f: Any) -> Option | None:
    spec = dict(f.metadata.get("option") or {})
    if not spec:
        return None
    name = spec.pop("name", f.name.replace("_", "-"))
    return Option(field=f.name, name=name, default=f.default, **spec)


OPTIONS: dict[str, Option] = {o.name: o for o in map(_option, fields(RunOptions)) if o is not None}
OPTIONS_BY_FIELD: dict[str, Option] = {o.field: o for o in OPTIONS.values()}


def options_for(command: str) -> list[Option]:
    """The options that change `command`'s run, in group order (read -> write)."""
    chosen = [o for o in OPTIONS.values() if command in o.commands]
    return sorted(chosen, key=lambda o: GROUPS.index(o.group))


# ---------------------------------------------------------------- parsing from outside


def find_option(name: str) -> Option | None:
    """The option a job or --set names: CLI spelling, dashes or underscores, with or without
    leading dashes, the short form (b) or the field name (dilate_px)."""
    key = str(name).strip().lstrip("-").replace("_", "-")
    found = OPTIONS.get(key)
    if found is None:
        found = next((o for o in OPTIONS.values() if (o.short or "").lstrip("-") == key
                      or o.field.replace("_", "-") == key), None)
    return found


def checked(option: Option, value: Any, where: str) -> Any:
    """`value` converted and checked, or one InputError naming where, the option and the fix."""
    try:
        return option.convert(value)
    except (TypeError, ValueError) as e:
        name = option.name
        raise InputError(f"{where}: option {name}={value!r}: {e}") from None


def parse_options(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """{'tile-size': '256', 'min-area': '50m2'} -> {'tile_size': 256, 'min_area': MinArea(m2=50)}.

    `None` leaves an option at its default (JSON null). The first unknown name or bad value
    raises one InputError that names `where` (e.g. jobs.jsonl:3) and the key."""
    out: dict[str, Any] = {}
    for name, given in values.items():
        option = find_option(name)
        if option is None:
            known = ", ".join(OPTIONS)
            raise InputError(f"{where}: unknown option {name!r}; options are: {known}")
        if given is not None:
            out[option.field] = checked(option, given, where)
    return out

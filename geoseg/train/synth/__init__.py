"""Procedural, georeferenced scenes with exact ground truth (tests, the demo, training data).

A scene is a layout of non-overlapping objects (buildings, damaged buildings and rubble, paved
and dirt roads, rivers and lakes, trees and woods, striped fields, bare ground) drawn as polygons
in pixel space, sized in metres. The image is painted from the rasterised polygons, so the masks
and the pixels agree exactly; the truth polygons are the same polygons on the scene's grid.

    from geoseg.train.synth import render_scene, render_pair, write_scene, write_pair, export_dataset
    scene = render_scene(7, 512, 512, gsd=0.5)          # in memory, ~0.15 s
    scene.mask("red-roofed houses")                     # H x W bool
    pair = render_pair(7, 512, 512, 0.5)                # before/after + change masks
    pair.mask("new buildings")
    written = write_scene("town.tif", 7, 1024, 1024, 0.5, crs="EPSG:32633", truth_path="town_truth.gpkg")
    written.truth_polygons("buildings")                 # GeoDataFrame in EPSG:32633
"""

from .change import CHANGE_CLASS, PairArrays, apply_changes, render_pair
from .export import Expression, export_dataset, expressions_for
from .georef import (
    SynthPair,
    SynthScene,
    scene_grid,
    truth_frame,
    write_geotiff,
    write_pair,
    write_scene,
)
from .layout import INSTANCE_CLASSES, RELATIONS, Instance, Layout, generate_layout
from .palette import SEASONS
from .render import DateParams, SceneArrays, render_scene
from .vocab import (
    ATTRIBUTE_SETS,
    CHANGE_KINDS,
    CHANGE_PHRASES,
    CLASS_NAMES,
    DEFAULT_CHANGE_KINDS,
    EXPRESSIONS,
    PHRASE_INDEX,
    PHRASES,
    SYNONYM_SETS,
    SYNONYMS,
    VOCABULARY,
    Concept,
    Phrase,
    UnknownPhraseError,
    phrases_for,
    resolve,
)

__all__ = [
    "ATTRIBUTE_SETS", "CHANGE_CLASS", "CHANGE_KINDS", "CHANGE_PHRASES", "CLASS_NAMES", "DEFAULT_CHANGE_KINDS", "EXPRESSIONS",
    "INSTANCE_CLASSES", "PHRASES", "PHRASE_INDEX", "RELATIONS", "SEASONS", "SYNONYMS", "SYNONYM_SETS", "VOCABULARY",
    "Concept", "DateParams", "Expression", "Instance", "Layout", "PairArrays", "Phrase", "SceneArrays", "SynthPair",
    "SynthScene", "UnknownPhraseError", "apply_changes", "export_dataset", "expressions_for", "generate_layout",
    "phrases_for", "render_pair", "render_scene", "resolve", "scene_grid", "truth_frame", "write_geotiff",
    "write_pair", "write_scene",
]

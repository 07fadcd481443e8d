"""The Processing algorithms: Segment, Change, Vectorize. Each builds a geoseg command line.

geoseg runs as an external program (its own Python environment: torch never enters QGIS's),
its tqdm progress drives the Processing bar, Cancel interrupts it (geoseg then writes nothing),
its one-line error goes to the Processing log, and the layers it wrote are loaded with the QGIS
style stored in the GeoPackage.
"""

from __future__ import annotations

import json
import shlex

from qgis.core import (
    Qgis,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsSettings,
    QgsVectorLayer,
)

from . import runner

GPKG_FILTER = "GeoPackage (*.gpkg *.GPKG)"


def _enum(scoped: str, legacy_owner, legacy: str):
    """QGIS >= 3.36 (and 4) scoped enums, else the 3.22 names."""
    owner, _, member = scoped.partition(".")
    value = getattr(getattr(Qgis, owner, None), member, None)
    return value if value is not None else getattr(legacy_owner, legacy)


DOUBLE = _enum("ProcessingNumberParameterType.Double", QgsProcessingParameterNumber, "Double")
INTEGER = _enum("ProcessingNumberParameterType.Integer", QgsProcessingParameterNumber, "Integer")
ADVANCED = _enum("ProcessingParameterFlag.Advanced", QgsProcessingParameterDefinition, "FlagAdvanced")


def _advanced(parameter):
    parameter.setFlags(parameter.flags() | ADVANCED)
    return parameter


class StyleFromGeoPackage(QgsProcessingLayerPostProcessorInterface):
    """Applies the layer's default style (geoseg's, in `layer_styles`) once Processing has loaded it
    (Processing loads result layers without their default style), after Processing's own "Style for
    polygon layers" setting."""

    # Processing keeps only a C++ pointer, and the algorithm instance that ran (a clone, in a task)
    # is gone by the time the layers load: the Python objects live here.
    _alive = []

    @classmethod
    def create(cls):
        post = cls()
        cls._alive = cls._alive[-255:] + [post]
        return post

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API)
        if isinstance(layer, QgsVectorLayer):
            message, found = layer.loadDefaultStyle()
            if found:
                layer.triggerRepaint()
            else:
                feedback.pushWarning(f"{layer.name()}: no style in the GeoPackage ({message})")


class GeosegAlgorithm(QgsProcessingAlgorithm):
    """What the three algorithms share: the executable, the run, the outputs."""

    QUERY, THRESHOLD, MIN_AREA, SIMPLIFY, FILL_HOLES = "QUERY", "THRESHOLD", "MIN_AREA", "SIMPLIFY", "FILL_HOLES"
    MODEL, DEVICE, BANDS, EXTRA, GEOSEG = "MODEL", "DEVICE", "BANDS", "EXTRA", "GEOSEG"
    OUTPUT, SUMMARY, FEATURES = "OUTPUT", "SUMMARY", "FEATURES"
    command_name = ""
    progress_tail = 90.0  # the last 10 % of the bar is geoseg's vectorise bar, when it draws one

    def createInstance(self):
        return type(self)()

    def group(self):
        return ""

    def groupId(self):
        return ""

    # ------------------------------------------------------------------ parameters
    def add_query(self, optional=False, help_text="Query (one per line: a layer each)"):
        self.addParameter(QgsProcessingParameterString(self.QUERY, help_text, defaultValue=None if optional else "buildings",
                                                       multiLine=True, optional=optional))

    def add_vectorise_options(self):
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, "Probability threshold", DOUBLE, 0.5, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterString(
            self.MIN_AREA, "Drop polygons smaller than (pixels, or square metres as e.g. 50m2)", defaultValue="0"))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            self.SIMPLIFY, "Simplify (tolerance in pixels, 0: off)", DOUBLE, 0.0, minValue=0.0)))
        self.addParameter(_advanced(QgsProcessingParameterBoolean(self.FILL_HOLES, "Fill holes", False)))

    def add_model_options(self):
        self.addParameter(QgsProcessingParameterString(
            self.MODEL, "Model (empty: geoseg's default)",
            optional=True))
        self.addParameter(_advanced(QgsProcessingParameterString(
            self.DEVICE, "Device (auto, cpu, cuda, cuda:1, mps)", defaultValue="auto")))
        self.addParameter(_advanced(QgsProcessingParameterString(
            self.BANDS, "Bands, 1-based, in model order (e.g. 3,2,1; empty: the first three)", optional=True)))

    def add_common_tail(self):
        self.addParameter(_advanced(QgsProcessingParameterString(
            self.EXTRA, "More geoseg options (e.g. --tile-size 512 --gsd native)", optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterString(
            self.GEOSEG, "geoseg executable (empty: the provider setting, $GEOSEG_EXECUTABLE, then PATH)",
            optional=True)))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Output GeoPackage", GPKG_FILTER))
        self.addOutput(QgsProcessingOutputString(self.SUMMARY, "geoseg's JSON summary"))
        self.addOutput(QgsProcessingOutputNumber(self.FEATURES, "Polygons written"))

    # ------------------------------------------------------------------ command line
    def raster_path(self, parameters, name, context):
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            return None
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"{layer.name()}: geoseg reads raster files, not {layer.providerType()} layers; "
                "export it first (Export > Save As... GeoTIFF)")
        return layer.source()

    def queries(self, parameters, context):
        text = self.parameterAsString(parameters, self.QUERY, context) or ""
        return [q.strip() for q in text.splitlines() if q.strip()]

    def vectorise_args(self, parameters, context):
        args = ["--threshold", repr(self.parameterAsDouble(parameters, self.THRESHOLD, context)),
                "--min-area", (self.parameterAsString(parameters, self.MIN_AREA, context) or "0").strip()]
        simplify = self.parameterAsDouble(parameters, self.SIMPLIFY, context)
        if simplify > 0:
            args += ["--simplify", repr(simplify)]
        if self.parameterAsBool(parameters, self.FILL_HOLES, context):
            args.append("--fill-holes")
        return args

    def model_args(self, parameters, context):
        args = []
        model = (self.parameterAsString(parameters, self.MODEL, context) or "").strip()
        if model:
            args += ["--model", model]
        device = (self.parameterAsString(parameters, self.DEVICE, context) or "").strip()
        if device and device != "auto":
            args += ["--device", device]
        bands = (self.parameterAsString(parameters, self.BANDS, context) or "").strip()
        if bands:
            args += ["--bands", bands]
        return args

    def arguments(self, parameters, context):
        """The command's own arguments, between `geoseg <command>` and the output options."""
        raise NotImplementedError

    def command(self, parameters, context):
        setting = QgsSettings().value(f"Processing/Configuration/{runner.SETTING}", "") or ""
        try:
            executable = runner.find_executable(
                self.parameterAsString(parameters, self.GEOSEG, context) or "", str(setting))
        except runner.GeosegNotFound as e:
            raise QgsProcessingException(str(e)) from None
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        extra = self.parameterAsString(parameters, self.EXTRA, context) or ""
        return ([executable, self.command_name, *self.arguments(parameters, context), *shlex.split(extra),
                 "-o", output, "--format", "gpkg", "--overwrite", "--json"], output)

    # ------------------------------------------------------------------ run
    def processAlgorithm(self, parameters, context, feedback):
        try:
            command, output = self.command(parameters, context)
        except QgsProcessingException as e:
            feedback.reportError(str(e), True)
            raise
        feedback.pushCommandInfo(" ".join(shlex.quote(c) for c in command))
        outcome = runner.run(command, progress=feedback.setProgress, info=feedback.pushConsoleInfo,
                             warning=feedback.pushWarning, canceled=feedback.isCanceled, tail=self.progress_tail)
        if outcome.canceled:
            raise QgsProcessingException("geoseg was cancelled; it wrote nothing")
        if outcome.returncode != 0:
            message = outcome.message()
            feedback.reportError(f"geoseg: {message}", True)
            raise QgsProcessingException(f"geoseg failed (exit code {outcome.returncode}): {message}")
        try:
            summary = json.loads(outcome.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise QgsProcessingException(f"geoseg printed no JSON summary: {outcome.stdout[-500:]!r}") from None
        feedback.setProgress(100)
        total = 0
        for layer in summary.get("layers", []):
            name, count = layer["name"], int(layer.get("features", 0))
            total += count
            uri = f"{output}|layername={name}"
            if count == 0:
                feedback.pushWarning(f"{name}: geoseg found nothing for {layer.get('query', name)!r} (empty layer)")
            else:
                feedback.pushInfo(f"{name}: {count} polygons")
            details = QgsProcessingContext.LayerDetails(name, context.project(), self.OUTPUT)
            if hasattr(details, "forceName"):
                details.forceName = True
            details.setPostProcessor(StyleFromGeoPackage.create())
            context.addLayerToLoadOnCompletion(uri, details)
        for warning in summary.get("warnings", []) or []:
            feedback.pushWarning(str(warning))
        return {self.OUTPUT: output, self.SUMMARY: json.dumps(summary), self.FEATURES: total}


class SegmentAlgorithm(GeosegAlgorithm):
    INPUT, PROBABILITIES = "INPUT", "PROBABILITIES"
    command_name = "segment"

    def name(self):
        return "segment"

    def displayName(self):
        return "Segment (find what a text query describes)"

    def shortHelpString(self):
        return ("Finds what the query describes in the raster and writes polygons to a GeoPackage: one "
                "layer per query (one query per line), with score, area_m2 and the run's provenance, "
                "loaded styled. Runs the geoseg program in its own environment (see the provider's "
                "settings for where it is).")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster"))
        self.add_query()
        self.add_vectorise_options()
        self.add_model_options()
        self.addParameter(_advanced(QgsProcessingParameterRasterDestination(
            self.PROBABILITIES, "Probabilities (a COG; re-vectorise it with Vectorize)", optional=True,
            createByDefault=False)))
        self.add_common_tail()

    def arguments(self, parameters, context):
        args = [self.raster_path(parameters, self.INPUT, context)]
        queries = self.queries(parameters, context)
        if not queries:
            raise QgsProcessingException("give a query (e.g. buildings)")
        args += queries if len(queries) == 1 else [a for q in queries for a in ("--query", q)]
        probabilities = self.parameterAsOutputLayer(parameters, self.PROBABILITIES, context)
        if probabilities:
            args += ["--probabilities", probabilities]
        return args + self.vectorise_args(parameters, context) + self.model_args(parameters, context)

    def processAlgorithm(self, parameters, context, feedback):
        results = super().processAlgorithm(parameters, context, feedback)
        probabilities = self.parameterAsOutputLayer(parameters, self.PROBABILITIES, context)
        if probabilities:
            results[self.PROBABILITIES] = probabilities
        return results


class ChangeAlgorithm(GeosegAlgorithm):
    BEFORE, AFTER, DILATE = "BEFORE", "AFTER", "DILATE"
    command_name = "change"

    def name(self):
        return "change"

    def displayName(self):
        return "Change (find what changed between two dates)"

    def shortHelpString(self):
        return ("Finds the query's change between two rasters of the same place and writes polygons with a "
                "change_type field (appeared, disappeared, changed). The query's words give the direction: "
                "\"new buildings\" (appeared), \"demolished buildings\" (disappeared), \"buildings\" (both). "
                "The second date is warped onto the first's grid.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.BEFORE, "Before (first date)"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AFTER, "After (second date)"))
        self.add_query(help_text="Query (one per line: a layer each), e.g. new buildings")
        self.add_vectorise_options()
        self.add_model_options()
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            self.DILATE, "Misregistration tolerance in pixels (single-date models)", INTEGER, 2, minValue=0)))
        self.add_common_tail()

    def arguments(self, parameters, context):
        args = [self.raster_path(parameters, self.BEFORE, context), self.raster_path(parameters, self.AFTER, context)]
        queries = self.queries(parameters, context)
        if not queries:
            raise QgsProcessingException("give a query (e.g. new buildings)")
        args += [a for q in queries for a in ("--query", q)]
        args += ["--dilate", str(self.parameterAsInt(parameters, self.DILATE, context))]
        return args + self.vectorise_args(parameters, context) + self.model_args(parameters, context)


class VectorizeAlgorithm(GeosegAlgorithm):
    INPUT = "INPUT"
    command_name = "vectorize"
    progress_tail = None  # its only bar is the vectorise bar

    def name(self):
        return "vectorize"

    def displayName(self):
        return "Vectorize (probabilities to polygons, no model)"

    def shortHelpString(self):
        return ("Turns a probability raster written by Segment or Change (Probabilities output, or geoseg's "
                "--probabilities) into polygons at another threshold or minimum area, without running the "
                "model again. The query defaults to the one recorded in the raster.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Probability raster (from geoseg)"))
        self.add_query(optional=True, help_text="Query stored with the layer (empty: the raster's)")
        self.add_vectorise_options()
        self.add_common_tail()

    def arguments(self, parameters, context):
        args = [self.raster_path(parameters, self.INPUT, context)]
        queries = self.queries(parameters, context)
        if len(queries) > 1:
            raise QgsProcessingException("Vectorize takes one query (the layer's)")
        if queries:
            args += ["--query", queries[0]]
        return args + self.vectorise_args(parameters, context)


ALGORITHMS = (SegmentAlgorithm, ChangeAlgorithm, VectorizeAlgorithm)

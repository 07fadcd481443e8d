"""QGIS Processing script: run geoseg as an external tool and load the GeoPackage it writes.

Install: QGIS > Processing Toolbox > Scripts (python icon) > Add Script to Toolbox... and pick
this file (or copy it into your profile's processing/scripts folder). It then appears as
"geoseg > Segment or find changes (geoseg)" and works in models and in batch mode.

It runs `geoseg segment RASTER QUERY -o OUT.gpkg --json` (or `geoseg change BEFORE AFTER QUERY`
when a second date is given) as a subprocess, so geoseg and its dependencies (torch, ...) live in
their own environment, not in QGIS's Python. geoseg's progress bar drives the Processing progress
bar, Cancel stops the run (geoseg then leaves no partial output), and the layers of the result
open with geoseg's default style.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsVectorLayer,
)

PERCENT = re.compile(r"(\d{1,3})%\|")


class GeosegAlgorithm(QgsProcessingAlgorithm):
    INPUT, AFTER, QUERY, THRESHOLD, MIN_AREA = "INPUT", "AFTER", "QUERY", "THRESHOLD", "MIN_AREA"
    MODEL, EXTRA, GEOSEG, OUTPUT, SUMMARY = "MODEL", "EXTRA", "GEOSEG", "OUTPUT", "SUMMARY"

    def name(self) -> str:
        return "geoseg"

    def displayName(self) -> str:
        return "Segment or find changes (geoseg)"

    def group(self) -> str:
        return "geoseg"

    def groupId(self) -> str:
        return "geoseg"

    def shortHelpString(self) -> str:
        return ("Finds what the query describes in the raster and writes polygons to a GeoPackage "
                "(one layer per query, with score, area_m2 and the run's provenance). Give a second "
                "date to find changes instead; the query's words say which way (\"new buildings\", "
                "\"demolished buildings\"). Runs the geoseg command-line tool.")

    def createInstance(self):
        return GeosegAlgorithm()

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster (before, in change mode)"))
        self.addParameter(QgsProcessingParameterString(self.QUERY, "Query", defaultValue="buildings"))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.AFTER, "Second date (optional: find changes between the two)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, "Probability threshold", QgsProcessingParameterNumber.Double, 0.5,
            minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterString(
            self.MIN_AREA, "Drop polygons smaller than (px, or m2 e.g. 50m2)", defaultValue="0"))
        self.addParameter(QgsProcessingParameterString(
            self.MODEL, "Model (registry name, checkpoint folder or hub id; empty: default)", optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.EXTRA, "More geoseg options (e.g. --device cuda --simplify 1)", optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.GEOSEG, "geoseg executable", defaultValue="geoseg"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, "Output GeoPackage", "GeoPackage (*.gpkg)"))
        self.addOutput(QgsProcessingOutputString(self.SUMMARY, "geoseg's JSON summary"))

    def processAlgorithm(self, parameters, context, feedback):
        command = self.command(parameters, context)
        feedback.pushCommandInfo(" ".join(command))
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        stderr_tail = self.follow_progress(proc, feedback)
        stdout = proc.stdout.read()
        code = proc.wait()
        if feedback.isCanceled():
            return {}
        if code != 0:
            raise QgsProcessingException(f"geoseg exited with {code}: {stderr_tail.strip() or 'no message'}")
        feedback.setProgress(100)
        summary = json.loads(stdout.strip().splitlines()[-1])
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        for layer in summary["layers"]:
            uri = f"{output}|layername={layer['name']}"
            if not QgsVectorLayer(uri, layer["name"], "ogr").isValid():
                raise QgsProcessingException(f"QGIS cannot open layer {layer['name']} of {output}")
            details = QgsProcessingContext.LayerDetails(layer["name"], context.project(), self.OUTPUT)
            context.addLayerToLoadOnCompletion(uri, details)
            feedback.pushInfo(f"{layer['name']}: {layer['features']} polygons")
        return {self.OUTPUT: output, self.SUMMARY: json.dumps(summary)}

    def command(self, parameters, context) -> list[str]:
        executable = self.parameterAsString(parameters, self.GEOSEG, context) or "geoseg"
        found = shutil.which(executable)
        if found is None:
            raise QgsProcessingException(
                f"{executable!r} not found: give the full path of geoseg (e.g. ~/venvs/geoseg/bin/geoseg)")
        before = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        after = self.parameterAsRasterLayer(parameters, self.AFTER, context)
        query = self.parameterAsString(parameters, self.QUERY, context)
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        cmd = [found, "change", before.source(), after.source()] if after else [found, "segment", before.source()]
        cmd += [query, "-o", output, "--json", "--overwrite",
                "--threshold", str(self.parameterAsDouble(parameters, self.THRESHOLD, context)),
                "--min-area", self.parameterAsString(parameters, self.MIN_AREA, context) or "0"]
        model = self.parameterAsString(parameters, self.MODEL, context)
        if model:
            cmd += ["--model", model]
        extra = self.parameterAsString(parameters, self.EXTRA, context)
        if extra:
            import shlex

            cmd += shlex.split(extra)
        return cmd

    @staticmethod
    def stop(proc) -> None:
        """Interrupt geoseg as Ctrl-C would: it removes its temporary files and writes nothing."""
        if os.name == "posix":
            proc.send_signal(signal.SIGINT)
        else:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    @staticmethod
    def follow_progress(proc, feedback) -> str:
        """Read geoseg's stderr: tqdm percentages drive the bar, other lines are logged."""
        tail, buffer = [], ""
        while True:
            chunk = proc.stderr.read(1)
            if not chunk:
                break
            if feedback.isCanceled():
                GeosegAlgorithm.stop(proc)
                break
            if chunk not in "\r\n":
                buffer += chunk
                continue
            match = PERCENT.search(buffer)
            if match:
                feedback.setProgress(int(match.group(1)))
            elif buffer.strip():
                feedback.pushInfo(buffer)
                tail = (tail + [buffer])[-5:]
            buffer = ""
        return "\n".join(tail)


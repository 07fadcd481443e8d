"""Runs inside real QGIS (Debian's /usr/bin/python3 with python3-qgis), driven by tests/test_qgis_plugin.py.

    python3 tests/qgis_plugin_driver.py PLUGIN_ZIP PROFILE_DIR COMMAND [ALGORITHM PARAMS_JSON [CANCEL_AT]]

Installs the zip the way QGIS's "Install from ZIP" does (extracted into the profile's
python/plugins folder), starts it the way QGIS starts a Processing plugin
(qgis.utils.startProcessingPlugin, which calls classFactory and initProcessing), then:
`inspect` prints the provider and its algorithms with their parameters; `run` runs ALGORITHM with
processing.run and loads the results as the Processing dialog does (handleAlgorithmResults),
printing what QGIS sees. One JSON line on stdout, prefixed with RESULT.
"""

import json
import os
import sys
import zipfile

zip_path, profile, command = sys.argv[1:4]
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject  # noqa: E402

plugins_dir = os.path.join(profile, "python", "plugins")
os.makedirs(plugins_dir, exist_ok=True)
with zipfile.ZipFile(zip_path) as zf:
    zf.extractall(plugins_dir)

app = QgsApplication([], False, profile)
app.initQgis()
sys.path.insert(0, "/usr/share/qgis/python/plugins")
sys.path.insert(0, plugins_dir)
from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()
import qgis.utils  # noqa: E402

qgis.utils.plugin_paths = [plugins_dir]
qgis.utils.updateAvailablePlugins()
out = {"available": list(qgis.utils.available_plugins)}
name = "geoseg_processing"
out["hasProcessingProvider"] = qgis.utils.pluginMetadata(name, "hasProcessingProvider")
out["loaded"] = qgis.utils.loadPlugin(name)
out["started"] = qgis.utils.startProcessingPlugin(name)
out["module_file"] = sys.modules[name].__file__
registry = QgsApplication.processingRegistry()
provider = registry.providerById("geoseg")
out["provider"] = provider.longName() if provider else None

if command == "inspect":
    out["algorithms"] = {
        alg.id(): {"name": alg.displayName(),
                   "parameters": {p.name(): {"type": p.type(), "optional": bool(p.flags() & p.FlagOptional),
                                             "default": None if p.defaultValue() is None else str(p.defaultValue())}
                                  for p in alg.parameterDefinitions()},
                   "outputs": [o.name() for o in alg.outputDefinitions()]}
        for alg in provider.algorithms()}
    from processing.core.ProcessingConfig import ProcessingConfig  # noqa: E402
    out["setting"] = ProcessingConfig.settings.get("GEOSEG_EXECUTABLE") is not None
    qgis.utils.unloadPlugin(name)
    out["after_unload"] = registry.providerById("geoseg") is not None

elif command == "run":
    import processing  # noqa: E402
    from processing.gui.Postprocessing import handleAlgorithmResults  # noqa: E402
    from qgis.core import QgsProcessingException, QgsVectorLayer  # noqa: E402

    algorithm, params = sys.argv[4], json.loads(sys.argv[5])
    cancel_at = float(sys.argv[6]) if len(sys.argv) > 6 else None

    class Feedback(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.progress, self.errors, self.infos, self.warnings, self.commands = [], [], [], [], []

        def setProgress(self, value):  # noqa: N802
            self.progress.append(round(value, 1))
            super().setProgress(value)
            if cancel_at is not None and value >= cancel_at:
                self.cancel()

        def reportError(self, error, fatalError=False):  # noqa: N802
            self.errors.append(error)

        def pushWarning(self, text):  # noqa: N802
            self.warnings.append(text)

        def pushConsoleInfo(self, text):  # noqa: N802
            self.infos.append(text)

        def pushCommandInfo(self, text):  # noqa: N802
            self.commands.append(text)

    feedback = Feedback()
    context = QgsProcessingContext()
    project = QgsProject.instance()
    context.setProject(project)
    try:
        results = processing.run(algorithm, params, feedback=feedback, context=context)
        out["exception"] = None
    except QgsProcessingException as e:
        results, out["exception"] = None, str(e)
    out.update(progress=feedback.progress, errors=feedback.errors, warnings=feedback.warnings,
               commands=feedback.commands, infos=feedback.infos[-5:], canceled=feedback.isCanceled())
    if results is not None:
        out["results"] = {k: v for k, v in results.items() if k != "SUMMARY"}
        out["summary"] = json.loads(results["SUMMARY"])
        out["to_load"] = list(context.layersToLoadOnCompletion().keys())
        alg = QgsApplication.processingRegistry().createAlgorithmById(algorithm)
        out["loaded_ok"] = handleAlgorithmResults(alg, context, feedback, False, params)
        layers = {}
        for layer in project.mapLayers().values():
            if not isinstance(layer, QgsVectorLayer):
                continue
            renderer = layer.renderer()
            symbol = renderer.symbol() if hasattr(renderer, "symbol") else None
            layers[layer.name()] = {"source": layer.source(), "features": layer.featureCount(),
                                    "renderer": renderer.type(),
                                    "fill": list(symbol.color().getRgb()) if symbol else None,
                                    "fields": [f.name() for f in layer.fields()]}
        out["project_layers"] = layers
print("RESULT " + json.dumps(out), flush=True)
app.exitQgis()
os._exit(0)  # QGIS 3.22's bindings can crash while the interpreter tears down

"""The geoseg Processing provider: its algorithms and its one setting (where geoseg is)."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from . import runner
from .algorithms import ALGORITHMS

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")


class GeosegProvider(QgsProcessingProvider):
    def id(self):
        return "geoseg"

    def name(self):
        return "geoseg"

    def longName(self):
        return "geoseg: segment GeoTIFFs from text queries"

    def icon(self):
        return QIcon(ICON)

    def svgIconPath(self):
        return ICON

    def load(self):
        """Adds "geoseg executable" to Processing > Options > Providers > geoseg."""
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:  # e.g. a QGIS without the Processing plugin: the setting is read from QgsSettings
            return super().load()
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(
            self.name(), runner.SETTING,
            "geoseg executable (empty: $GEOSEG_EXECUTABLE, then geoseg on PATH)", "",
            valuetype=Setting.FILE))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        try:
            from processing.core.ProcessingConfig import ProcessingConfig
        except ImportError:
            return
        ProcessingConfig.removeSetting(runner.SETTING)

    def loadAlgorithms(self):
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())

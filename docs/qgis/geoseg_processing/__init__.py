"""geoseg Processing: a QGIS Processing provider that runs the geoseg program (Segment, Change, Vectorize)."""


def classFactory(iface):  # noqa: N802 (QGIS API)
    from .plugin import GeosegPlugin

    return GeosegPlugin(iface)

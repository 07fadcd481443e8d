"""Everything that reads or writes files: input rasters and their resolution, remote and STAC inputs,
vector outputs and their QGIS style, COG copies, quick-look previews, atomic directory swaps.

    raster.py      open and validate scenes (one or two dates), bands, nodata, the second date aligned
    gsd.py         ground sample distance: a scene's, and the resolution to read it at for a model
    remote.py      URLs, object stores and /vsi paths (GDAL's virtual file systems)
    stac.py        a STAC Item as a scene
    gpkg.py        GeoPackage layers with provenance and a default style, written atomically
    formats.py     GeoPackage, GeoParquet, FlatGeobuf, GeoJSON behind one interface
    qgis_style.py  the default QGIS style (QML, SLD, layer_styles row)
    cog.py         Cloud-Optimised GeoTIFF copies (probabilities, masks)
    preview.py     the quick-look PNG
    fileio.py      atomic replacement of a directory

Submodules are imported on use (`from geoseg.io import raster`): this package imports nothing itself,
so a torch-free command pays only for what it reads.
"""

__all__ = ["cog", "fileio", "formats", "gpkg", "gsd", "preview", "qgis_style", "raster", "remote", "stac"]

"""geoseg: language-guided segmentation of large GeoTIFFs into georeferenced GeoPackage polygons."""

__version__ = "0.1.0"

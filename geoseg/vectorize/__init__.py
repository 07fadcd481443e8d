"""The vectoriser: probability raster -> polygons, block by block, in memory bounded by the block size.

The raster is read in square blocks. In each block the foreground is polygonised (GDAL's
polygoniser, 4-connectivity) and grouped into connected components: by labelling (scipy) when
scores are needed or with 8-connectivity, or, for a plain mask with 4-connectivity, by taking
each polygon as its own component, which skips the labelling. A component that does not reach an
interior block edge is complete and is emitted at once; one that does is *pending*: it is joined
to the parts it meets across the seam (union-find over pixel adjacency along the seam) and
emitted when its group can no longer grow, i.e. once the block row below has been read. Pending
state therefore only ever holds parts that touch a seam of the current block row, never the scene.

All polygon work happens in pixel coordinates (integers, exact in float64) and per-block arrays,
not per-component objects. Components dissolved across seams are cleaned of the collinear
vertices the seams left, so every component has the vertices of polygonising the whole raster as
one block; one `normalize` after the affine transform to the raster CRS (applied once, at the
end) then makes the result identical, ring starts and orientation included.

Input rasters (first band is read):

- integer raster with a scale tag (what the pipeline writes: uint8, v in 0..254, scale 1/254,
  nodata 255): probability = v * scale + offset;
- floating-point raster: probability = v * scale + offset (scale 1, offset 0 when untagged);
  NaN is nodata as well as the file's nodata value;
- integer raster without a scale tag: a mask. Every non-zero pixel is foreground (0/1 and 0/255
  masks both work), the threshold is not used and the score is 1.0.

Pixels that are nodata or masked in the file's GDAL mask are never foreground.
"""

from geoseg.vectorize.options import VectorizeOptions
from geoseg.vectorize.pixels import THRESHOLD_EPS
from geoseg.vectorize.polygons import (
    OUTPUT_COLUMNS,
    STREAMED_BLOCK,
    vectorize_probabilities,
    vectorize_rows,
    write_mask,
)
from geoseg.vectorize.postprocess import polygon_metrics
from geoseg.vectorize.rowfeed import FeedAbandoned, RowFeed

__all__ = [
    "OUTPUT_COLUMNS", "STREAMED_BLOCK", "THRESHOLD_EPS", "FeedAbandoned", "RowFeed", "VectorizeOptions",
    "polygon_metrics", "vectorize_probabilities", "vectorize_rows", "write_mask",
]

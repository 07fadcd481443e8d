"""geoseg's command line: thin Click commands over the `geoseg` library."""

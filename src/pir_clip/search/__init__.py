"""Archive search: embedding image folders, shards and GeoTIFF scenes into an index, querying it, and the
web server with its page."""

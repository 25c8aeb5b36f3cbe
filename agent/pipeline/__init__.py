"""Model pipelines on the device: several models and built-in glue steps served as one unit."""

"""The `pal` command: the top layer, the one place that sees every other package."""

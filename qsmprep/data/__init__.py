"""Package data: presets, look-up tables, methods boilerplate phrases and references."""

"""Built-in archs plugins, one per file."""

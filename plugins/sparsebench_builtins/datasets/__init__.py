"""Built-in datasets plugins, one per file."""

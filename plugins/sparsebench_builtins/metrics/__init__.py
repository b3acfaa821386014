"""Built-in metrics plugins, one per file."""

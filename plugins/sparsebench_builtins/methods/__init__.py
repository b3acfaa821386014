"""Built-in methods plugins, one per file."""

"""Built-in model adapters, registered as ordinary `tokenprune` plugins."""

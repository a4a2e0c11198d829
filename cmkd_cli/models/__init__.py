"""Models, built by name from a registry (`models.registry.MODELS` imports them on its first
lookup)."""

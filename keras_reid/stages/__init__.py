"""Pipeline stages (registered through the keras_reid.plugins entry point like any plugin)."""

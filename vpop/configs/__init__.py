"""Product presets and the default config, shipped as package data (`vpop presets` lists them)."""

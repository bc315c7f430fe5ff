"""focuslab presets (TOML), installed as the package data of focuslab.presets."""

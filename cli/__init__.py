"""focuslab's Click command tree (installed as ``focuslab.cli``); the only place that imports Click."""

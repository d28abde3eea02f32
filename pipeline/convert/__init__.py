"""Stage convert: annotation files -> validated masks, manifest and reports (see stage.py)."""

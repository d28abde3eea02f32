"""Everything that reads or writes files: atomic writes and hashing (files), images, masks."""

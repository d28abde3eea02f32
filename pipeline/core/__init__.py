"""The contracts every stage shares: records, the manifest, its schemas. No IO but the
manifest reader; nothing here imports storage or a stage."""

"""Annotation readers: one module per format, each turns a file into a Record plus Issues."""

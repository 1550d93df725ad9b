"""Exports researchers' tools read: CSV, Parquet, Raven selection tables, a Darwin Core Archive and
a labelled list of the guides' judged clips, each from any filtered selection of detections.

`formats.export(store, format, filter, out)` is the one entry point (the CLI's `export` and the
API's `/api/v1/exports/{format}` both call it); each writer takes an iterable of detection rows
(`sync_server.db.queries`), so memory stays bounded however large the selection.
"""

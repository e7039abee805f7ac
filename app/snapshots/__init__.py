"""Snapshot archive format v1 (DESIGN 8): streaming capture, verification and safe restore.

Entry points for the snapshot service:

* ``writer.write_snapshot``: provider exports → checked, scrubbed, compressed blob + manifest;
* ``reader.restore_snapshot`` / ``reader.read_snapshot``: verified, sanitized tar streams back;
* ``reader.verify_snapshot``, ``reader.load_manifest``, ``reader.delete_snapshot``;
* ``manifest.SnapshotManifest``: the stored record; ``safe_tar.UnsafeEntry``: a refused entry.
"""

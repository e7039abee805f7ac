"""Snapshot archive formats v1 and v2 (DESIGN 8): streaming capture, verification and safe restore.

Entry points for the snapshot service:

* ``writer.write_snapshot`` (v1): provider exports → checked, scrubbed, compressed blob + manifest;
* ``chunked_writer.write_chunked_snapshot`` (v2): the same tar stream as content-defined
  chunks stored once each (``chunking``, ``chunk_store``) + manifest;
* ``reader.restore_snapshot`` / ``reader.read_snapshot``: verified, sanitized tar streams
  back, from either format (``decoder`` for v1, ``chunked_decoder`` for v2);
* ``reader.verify_snapshot``, ``reader.load_manifest``, ``reader.delete_snapshot``;
* ``manifest.SnapshotManifest`` / ``chunked_manifest.ChunkedManifest``: the stored records;
  ``safe_tar.UnsafeEntry``: a refused entry.
"""

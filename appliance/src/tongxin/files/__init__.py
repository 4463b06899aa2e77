"""Large files: resumable uploads in parts, verified checksums, ranged downloads.

``ports`` names what the file service needs (a blob store for the bytes, a
metadata store for uploads, parts and files); ``local`` and ``s3`` are the
blob stores, ``sqlite_meta`` the embedded metadata store, ``service`` the
logic. The HTTP contract is docs/files-api.md (server/files_api.py).
"""

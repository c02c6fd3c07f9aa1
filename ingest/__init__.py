"""Getting documents in: loaders per source, one pipeline, the records that make it idempotent.

- ``documents``: what every module shares: ``Block``, ``Parsed``, ``Skipped``, ``Summary``,
  ``IngestError``.
- ``files`` (with ``pdf`` and ``html``) and ``web``: the loaders: a folder, a crawled site. They
  yield parsed documents and depend only on ``documents``, ``cache``, ``progress`` and
  ``safety``, never on the orchestration.
- ``chunking``: documents into chunks the embedding model in use reads whole.
- ``records``: the record managers (SQLite or MongoDB) and their schema version.
- ``cache``: the parse cache, so unchanged files and pages are not parsed again.
- ``progress``: counts for job status; bars on a terminal, plain lines elsewhere.
- ``safety``: where ingestion may reach (public addresses, folders under the allowed roots).
- ``pipeline``: the orchestration: a loader's documents, chunked and indexed incrementally.
- ``sources``: what was ingested, listed and removed.
- ``jobs``: the request that starts a background ingestion, and the job runner (the HTTP face
  lives in the web layer).
- ``cli``: ``hearth ingest web|files`` and ``hearth sources list|remove``.
"""

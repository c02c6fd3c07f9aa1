"""Getting documents in: one module per source (``web``, ``files``), one ``pipeline``.

Both sources produce parsed documents; the pipeline splits them into chunks that fit the
embedding model's window and hands them to LangChain's indexing API, whose record manager
makes re-ingesting idempotent. ``sources`` lists and removes what was ingested, ``jobs`` runs
ingestion in the background for the HTTP API, ``cli`` is the ``hearth ingest``/``sources`` face.
"""

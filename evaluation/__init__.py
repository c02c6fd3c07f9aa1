"""Hearth's evaluation toolkit: does a change to chunking, prompts, models or retrieval help?

The method is the origin's (a Q&A bot of a blog, evaluated on questions generated from the
blog's own chunks): `generate` writes a question for each sampled chunk, `run` answers them
through Hearth and scores the answers (ROUGE, an LLM judge, retrieval hit rate), `score`
re-scores an existing results file and `compare` counts wins and ties between two runs.

Modules stay light to import: models, plotting and ROUGE libraries load when first used.
"""

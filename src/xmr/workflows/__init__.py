"""End-to-end jobs that combine the library's stages: evaluate a model, predict a submission,
build an index from embeddings, the ``image-text-retrieval`` pipeline, the demo.

This is the application layer: it may import every layer below it (train, eval, search, index,
encode, models, data, io) and nothing above it (``cli``, ``serve``).
"""

"""mPLUG (ModelScope's ``damo/mplug_image-text-retrieval_*``) as an xmr cross-encoder.

``create_cross_encoder("mplug:DIR")`` (or a bare ``DIR`` in ModelScope's layout) loads the
retrieval model's image-text matching head; see :mod:`xmr.models.mplug.backend` for what it
computes and :mod:`xmr.models.mplug.layout` for the files it reads. Importing this package is
light: torch is imported when a model is built.
"""

"""The neutral core: task specs, registries, seeding, numeric checks, checkpoint IO and the data protocol.

It imports neither open_clip nor ``data_modules/`` (``tests/test_layers.py`` enforces it), so data
modules and user packages can depend on it without loading a model library.
"""

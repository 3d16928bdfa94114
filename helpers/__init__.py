"""Helpers for the book "Checkpoints vs SavedModel": each module is named after a noun of the book.

- `helpers.toy`: the toy model, data and training loop of the checkpoint chapters.
- `helpers.checkpoints`: a checkpoint's files, keys and object graph, with clear errors for bad paths.
- `helpers.graph`: the object graph drawn in the official guide's colours.
- `helpers.table`, `helpers.display`: printing tables and showing helper source in the book.
"""

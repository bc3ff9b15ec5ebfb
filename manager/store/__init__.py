"""The home as a store of files: ``fs`` is the one module that writes, renames or deletes a path.

It sits at the bottom of the layers (it knows only the home), so that the catalog, the data sets
and the backbone loader can all confine their paths through it.
"""

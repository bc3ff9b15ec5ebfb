"""The home as a store of files: the one owner of the filesystem (``fs``), materialised backbones
(``backbones``), recording a trained version (``record``) and maintenance (``maintenance``: gc,
verify, orphans).

Import from the submodules; nothing is re-exported, so that the catalog can use ``store.fs``
without importing the rest.
"""

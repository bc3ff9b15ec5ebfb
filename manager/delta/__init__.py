"""The consolidated delta: structure (supports as views), the file format, stage 1 and stage 2.

Import from the submodules (``manager.delta.apply``, ``.consolidate``, ``.delta``, ``.sizing``,
``.structure``): nothing is re-exported here, so that loading the switching code does not pull in
the training side (timm), and no function shadows the submodule it lives in.
"""

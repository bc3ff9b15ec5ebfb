"""The consolidated delta, torch-only: supports as views (``structure``), the file format
(``delta``), the exact switch math (``apply``) and fused merges (``fused``).

Stage 1 (an adapted model -> ``Delta``) is timm-aware and lives in ``manager.adapters.fold``.
Import from the submodules: nothing is re-exported here, so that loading the switching code does
not pull in the training side.
"""

"""Operations that span the catalog and the store: materialising a backbone (``backbones``),
recording a trained version (``record``) and maintenance (``maintenance``: gc, verify, orphans).

This layer sits above ``catalog`` and ``store`` so that neither needs the other's upper half.
Import from the submodules; nothing is re-exported.
"""

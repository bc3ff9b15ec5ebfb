"""mgr: one frozen ViT backbone, many tasks, mergeable Consolidator adapters."""

__version__ = "0.1.0"

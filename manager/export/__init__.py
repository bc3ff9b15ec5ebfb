"""Leaving mgr: a task version as a plain timm model (``mgr export``), optionally as ONNX."""

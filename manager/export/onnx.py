"""ONNX export of a merged model (``mgr export --onnx``), only where the onnx packages are there."""

from __future__ import annotations

import importlib.util

from torch import nn

from manager.errors import MgrError

INSTALL_HINT = "pip install onnx onnxscript"


def require_onnx() -> None:
    """MgrError (one line, how to install) unless torch's ONNX exporter can run here."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise MgrError(
            f"ONNX export needs the {' and '.join(missing)} package(s): {INSTALL_HINT} "
            "(nothing was written)"
        )


def onnx_bytes(model: nn.Module, input_size: tuple[int, int, int]) -> bytes:
    """The model as ONNX bytes (weights inside), batch size dynamic, input ``(B, *input_size)``."""
    import torch

    require_onnx()
    x = torch.zeros(1, *input_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            external_data=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            report=False,
            verbose=False,
        )
    except Exception as e:  # the exporter raises many kinds; the user needs the first line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MgrError(f"ONNX export failed: {type(e).__name__}: {first}") from None
    return program.model_proto.SerializeToString()

"""Hyper-parameters of one training run, as recorded in the catalog."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class TrainConfig:
    """The paper's recipe by default: AdamW, batch 64, 100 epochs, cosine with 10 warm-up epochs."""

    method: str = "consolidator"
    groups: str = ""  # consolidator branches, e.g. "384,192" or "96,96s"; "" = the default
    shuffle: bool = False  # reorder the input channels of every branch
    drop_path: float = 0.0
    lora_rank: int = 8
    epochs: int = 100
    warmup_epochs: int | None = None  # None = 10% of the epochs, as the paper (10 of 100)
    lr: float | None = None  # head, biases (and full fine-tuning's weights); None = the method's
    lr_norm: float | None = None  # every LayerNorm; None = lr x the method's norm scale
    lr_branch: float | None = None  # adapter branches (Consolidator, LoRA A/B); None = lr x scale
    weight_decay: float = 1e-4
    batch_size: int = 64
    img_size: int | None = None  # None = the backbone's own size
    seed: int = 0
    storage_dtype: str = "float32"
    # Compute settings (issue 11). precision: "fp32", "bf16" or "fp16" autocast (None = bf16 on
    # CUDA, fp32 elsewhere; parameters and artifact keep their dtypes); compile: torch.compile
    # the forward. batch_size above is the global batch, over every torchrun process.
    precision: str | None = None
    compile: bool = False
    extra: dict = field(default_factory=dict)
    tune: dict | None = None  # the search that chose these settings (mgr train --tune)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed (everything but the epoch count and the
        record of a search that led to these settings)."""
        d = self.to_json()
        d.pop("epochs", None)
        d.pop("tune", None)
        return json.dumps(d, sort_keys=True)

"""Driver for tests/test_trainer.py's FSDP test, run under ``accelerate launch`` with 2 processes.

    accelerate launch --multi_gpu --num_processes 2 ... tests/fsdp_driver.py CONFIG.json OUT

In one launch (three trainings, one after the other): ``OUT/fsdp`` trains 4 iterations sharded;
``OUT/fsdp_split`` trains 2, then resumes for 2 more; ``OUT/ddp`` trains 4 unsharded;
``OUT/fsdp_kl`` trains one Flow-GRPO iteration (KL to the reference) sharded.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

from treegrpo.config import resolve_config
from treegrpo.trainer import train


def main() -> None:
    values = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)

    def run(name: str, overrides: list[str], **kwargs: object) -> None:
        train(resolve_config(values, overrides + [f"output_dir={out / name}"]), **kwargs)  # type: ignore[arg-type]

    run("fsdp", ["train.fsdp=true"])
    run("fsdp_split", ["train.fsdp=true", "train.iterations=2", "train.eval_every=0"])
    run("fsdp_split", ["train.fsdp=true", "train.eval_every=0"], resume=str(out / "fsdp_split"))
    run("ddp", [])
    # the KL term's reference forwards (adapters switched off) under FSDP
    run("fsdp_kl", ["train.fsdp=true", "method=flow_grpo", "tree.trees=2", "train.iterations=1", "train.eval_every=0"])


if __name__ == "__main__":
    main()

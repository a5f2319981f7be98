"""Run under ``torchrun --nproc_per_node 2``: trains briefly and saves each rank's weights.

Used by test_train.py to check that data-parallel ranks hold identical weights.
"""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from dicyc.train import prepare_run, resolve_config, train


def main(a, b, out):
    overrides = {"method": "cyclegan", "ngf": 4, "n_blocks": 1, "ndf": 4, "slice_size": 32, "spacing": [8.0, 8.0], "iterations": 4,
                 "checkpoint_every": 2, "epoch_length": 100, "batch_size": 2}
    if int(os.environ["RANK"]) == 0:
        prepare_run(out, "cyclegan", [a], [b], overrides=overrides)
    config = resolve_config(None, overrides)

    def dump(nets, iteration, rank):
        tensors = {f"{n}.{k}": v.detach().cpu().contiguous() for n, net in nets.items() for k, v in net.state_dict().items()}
        save_file(tensors, str(Path(out) / f"rank{rank}_it{iteration}.safetensors"))

    train([a], [b], out, config, device="cpu", on_checkpoint=dump)


if __name__ == "__main__":
    main(*sys.argv[1:4])

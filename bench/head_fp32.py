"""The next lever of the bf16 comparison (BENCHMARKS "Does bf16 cost accuracy?"), measured before anything
is built for it: ``crlf`` with SimCLR's projection head computed in fp32 inside bf16 autocast (the backbone
stays bf16).

    python bench/ablate.py --name precision-bf16head32-s0 --threads 1 --runner bench/head_fp32.py -- <flags>

bf16 at equal epochs cost ~0.7 linear points on the proxy while the losses already run in fp32; the head's
two matrix products are what is left in bf16 between the features and the loss. This is not a CRLF option:
it replaces ``ProjectionHead.forward`` in this process only, then runs the CLI.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F


def forward_in_fp32(self, h: torch.Tensor) -> torch.Tensor:
    with torch.autocast(h.device.type, enabled=False):
        return F.normalize(self.net(h.float()), dim=1)  # (B, out_dim) fp32, unit rows


def main(argv: list[str]) -> int:
    from crlf.cli import main as crlf_main
    from crlf.models.heads import ProjectionHead

    ProjectionHead.forward = forward_in_fp32
    return crlf_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

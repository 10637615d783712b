"""Every method's loss in one place, as ``lightly.loss`` has them: ``from crlf.losses import NTXentLoss``.

Each loss is defined beside the method that uses it (a method is one file, see :mod:`crlf.methods`); this index
only re-exports them, for users who want a loss without its method. Importing it imports every method's file.
"""

from __future__ import annotations

from crlf.methods.barlowtwins import BarlowTwinsLoss
from crlf.methods.byol import BYOLLoss
from crlf.methods.dino import DINOLoss
from crlf.methods.fastsiam import FastSiamLoss
from crlf.methods.ijepa import PatchRegressionLoss
from crlf.methods.mae import MaskedPixelLoss
from crlf.methods.moco import InfoNCEWithQueue, MoCoV3Loss
from crlf.methods.nnclr import NNCLRLoss
from crlf.methods.simclr import NTXentLoss
from crlf.methods.simsiam import NegativeCosine
from crlf.methods.swav import SwAVLoss, sinkhorn
from crlf.methods.vicreg import VICRegLoss

__all__ = [
    "BYOLLoss",  # BYOL: normalised MSE between prediction and momentum target
    "BarlowTwinsLoss",  # Barlow Twins: cross-correlation to the identity
    "DINOLoss",  # DINO: cross-entropy to the centred, sharpened teacher
    "FastSiamLoss",  # FastSiam: negative cosine to the mean of the other views' targets
    "InfoNCEWithQueue",  # MoCo v2: InfoNCE with a queue of negatives
    "MaskedPixelLoss",  # MAE: MSE on the masked patches' (normalised) pixels
    "MoCoV3Loss",  # MoCo v3: InfoNCE over the batch's keys
    "NNCLRLoss",  # NNCLR: InfoNCE with the nearest neighbour as positive
    "NTXentLoss",  # SimCLR: normalised-temperature cross-entropy
    "NegativeCosine",  # SimSiam: negative cosine with stop-gradient
    "PatchRegressionLoss",  # I-JEPA: MSE between predicted and target patch representations
    "SwAVLoss",  # SwAV: swapped prediction of Sinkhorn codes
    "VICRegLoss",  # VICReg: invariance, variance and covariance terms
    "sinkhorn",  # SwAV's Sinkhorn-Knopp codes
]

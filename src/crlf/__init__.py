"""CRLF: Contrastive Representation Learning Framework.

    from crlf import ResNetEncoder
    enc = ResNetEncoder.from_pretrained("runs/r1")   # (B, 3, 32, 32) -> (B, 512)
"""

__version__ = "0.1.0"
__all__ = ["ResNetEncoder", "ProjectionHead", "NTXentLoss", "__version__"]


def __getattr__(name):  # lazy: `crlf --help` should not wait for torch to import
    if name == "ResNetEncoder":
        from crlf.models.encoder import ResNetEncoder

        return ResNetEncoder
    if name == "ProjectionHead":
        from crlf.models.heads import ProjectionHead

        return ProjectionHead
    if name == "NTXentLoss":
        from crlf.methods.simclr import NTXentLoss

        return NTXentLoss
    raise AttributeError(f"module 'crlf' has no attribute '{name}'")

"""CRLF: Contrastive Representation Learning Framework.

    from crlf import ResNetEncoder
    enc = ResNetEncoder.from_pretrained("runs/r1")   # (B, 3, 32, 32) -> (B, 512)

    from crlf import load_encoder                    # any run: ResNet, ViT (vit_tiny, vit_small) or timm:NAME
    enc = load_encoder("runs/r1")                    # (B, 3, H, W) -> (B, enc.feature_dim)

    from crlf import HubEncoder                      # Hugging Face Hub: save_pretrained / from_pretrained / push_to_hub
    enc = HubEncoder.from_run("runs/r1")
"""

__version__ = "0.1.0"
__all__ = ["ResNetEncoder", "load_encoder", "build_backbone", "HubEncoder", "ProjectionHead", "NTXentLoss",
           "__version__"]


def __getattr__(name):  # lazy: `crlf --help` should not wait for torch to import
    if name == "ResNetEncoder":
        from crlf.models.encoder import ResNetEncoder

        return ResNetEncoder
    if name in ("load_encoder", "build_backbone"):
        from crlf.models import backbones

        return getattr(backbones, name)
    if name == "HubEncoder":
        from crlf.publish.hub import HubEncoder

        return HubEncoder
    if name == "ProjectionHead":
        from crlf.models.heads import ProjectionHead

        return ProjectionHead
    if name == "NTXentLoss":
        from crlf.methods.simclr import NTXentLoss

        return NTXentLoss
    raise AttributeError(f"module 'crlf' has no attribute '{name}'")

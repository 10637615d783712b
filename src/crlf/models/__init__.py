"""Encoders and heads: ``backbones`` builds every arch (ResNet, ViT, timm) and loads any run's encoder;
``encoder`` holds the ResNets, ``timm_encoder`` the ViTs and timm models, ``heads`` the projectors."""

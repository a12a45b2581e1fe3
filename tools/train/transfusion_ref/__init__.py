"""PyTorch reference of the Transfusion edge runtime (arXiv 2408.11039).

The numerics here are the source of truth that the Rust converter's ONNX graphs are checked
against (docs/checkpoint.md, docs/bundle.md).
"""

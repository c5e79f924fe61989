"""The model stage: AST with Token Merging in PyTorch (``fastast``), its ToMe algorithm (``tome``), the size
and ToMe settings (``config``) and the FLOP count that sets the ideal speed-up (``flops``)."""

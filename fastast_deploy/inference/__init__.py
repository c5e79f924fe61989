"""The one runner: a checkpoint SOURCE (run in PyTorch), a built engine or an exported .onnx behind one call, with
its batch range, feature settings, labels and windows (`runner`), and the windowed, batched, pooled scoring of
audio files that predict, evaluate and bench share (`scoring`)."""

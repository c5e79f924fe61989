"""The serving stage: label scores for audio files from any engine or checkpoint (``predict``) and Triton
Inference Server model repositories (``triton``)."""

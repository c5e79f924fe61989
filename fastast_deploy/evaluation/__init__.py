"""The evaluation stage: metrics (``metrics``), verify's inputs and references (``inputs``), parity and speed
reports (``verify``), the r sweep (``bench``) and the interleaved timing both use (``timing``)."""

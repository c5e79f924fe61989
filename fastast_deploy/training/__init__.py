"""The training stage: CMKD distillation with ToMe in the loop. Settings (``config``), losses (``cmkd``),
teachers (``teachers``), run preparation (``setup``), resumable state (``state``) and the loop (``loop``)."""

"""The audio stage: Kaldi fbank features (``features``), data lists and label sets (``datasets``) and the
built-in synthetic sound-event dataset (``synthetic``)."""

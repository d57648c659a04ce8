"""Layer 5, the command line: ``anyconv explain | check | bench | demo``, thin over the layers below."""

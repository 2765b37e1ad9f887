"""Where bytes come from: one module per source behind the protocol in `base`."""

"""Use cases of the control plane, independent of HTTP: the API, CLI and dashboard share them."""

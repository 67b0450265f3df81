"""The HTTP side: settings, routes and page (api, static/), the inference protocol (inference),
metrics and request log (metrics), limits, models from a registry (registry), mnist-serve (main)."""

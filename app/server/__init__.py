"""The HTTP side: settings, the routes and their page (api, static/), the limits on requests
(limits), and `mnist-serve` on uvicorn (main)."""

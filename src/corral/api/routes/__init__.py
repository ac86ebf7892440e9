"""The HTTP API's routes, one module per domain (the names the store and the
CLI use); :func:`corral.api.app.create_app` includes their routers."""

"""Serving-side library: durable multi-tenant memory store, API schemas, auth, settings.

`larimar/serving/app.py` wires these into Ray Serve deployments; everything testable lives here.
"""

"""Serving-side files beside the library: TF Serving configs, manifests and the development stand-in server.

Nothing in ``cxr_tfp/`` imports this package.
"""

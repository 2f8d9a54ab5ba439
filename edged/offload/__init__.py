"""Offloading: policies, online estimators, the fog node and client, and the dispatch engine.

Import the submodules directly (``edged.offload.policy``, ``.estimator``, ``.fog_client``,
``.fog_server``, ``.dispatcher``, ``.keys``); this package imports nothing heavy.
"""

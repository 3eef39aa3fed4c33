"""Test support: OCI image builders, real registry servers and a token issuer.

Import these modules as ``support.<name>`` (``from support.oci import TarEntry``):
pytest puts ``tests/`` on ``sys.path`` because ``tests/`` is not a package, so
``tests.support`` is not importable under ``pytest`` run from the venv.
"""

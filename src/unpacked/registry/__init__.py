"""The OCI distribution client (pull side).

``RegistryClient`` fetches manifests, indexes, image configs, blobs and tag lists,
verifying every byte against its digest, with bearer/basic authentication
(credentials from the docker ``config.json``), retries with backoff, 429
handling and per-registry concurrency limits. Everything else in this package is
private: ``_auth`` (the auth flow), ``_challenge`` (``WWW-Authenticate``),
``_credentials`` (auth files), ``_transport`` (one HTTP exchange), ``_retry``,
``_stream`` (verified blob streams), ``_errors`` (error bodies → exceptions),
``_endpoint`` (scheme, host, mirrors), ``_link`` (pagination).
"""

from ._client import FetchedManifest, RegistryClient, ResolvedImage
from ._endpoint import scheme_for
from ._options import RegistryOptions
from ._stream import BlobStream

__all__ = [
    "BlobStream",
    "FetchedManifest",
    "RegistryClient",
    "RegistryOptions",
    "ResolvedImage",
    "scheme_for",
]

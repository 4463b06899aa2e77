"""The offline install bundle: its signed manifest (build, sign, verify) and packing.

``appliance/scripts/bundle.sh`` (``make bundle``) downloads what an install needs into one
directory and calls :func:`build_manifest` and :func:`sign_manifest` through
``tongxin bundle manifest``; ``tongxin bundle verify`` (run by the Ansible role ``bundle``
on the controller before anything is installed) calls :func:`verify_bundle`.
"""

from tongxin.bundle.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    SIGNER_NAME,
    BundleError,
    Missing,
    build_manifest,
    load_or_create_signing_key,
    sign_manifest,
    verify_bundle,
)

__all__ = [
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "SIGNER_NAME",
    "BundleError",
    "Missing",
    "build_manifest",
    "load_or_create_signing_key",
    "sign_manifest",
    "verify_bundle",
]

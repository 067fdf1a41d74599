"""Artifacts: the versioned, signed output of ``policykit apply``.

Layout (see docs/artifact.md)::

    <output>/<policy-name>/<version>/        the artifact (published atomically)
      manifest.json                          ids and sha256 of everything else
      policy.yaml, plan.json, weights/, audit/
    <output>/<policy-name>/<version>.sig     OpenSSF model-signing bundle
"""

"""The policy language: schema, loading with positions, ``extends``, formatting."""

"""Keys and secrets published with p2ptun (``config/*.example.toml``, the README) that a
config must not use: anyone can read them, so a node or rendezvous running with one is open
to impersonation. :func:`check_key` and :func:`check_secret` turn them into a ConfigError, so
``p2ptun check``, ``up`` and ``rendezvous`` all refuse such a config with one line.
"""

from __future__ import annotations

from p2ptun.keys import decode_key, public_key

#: The private keys in the example configs (alice's node, the rendezvous).
EXAMPLE_PRIVATE_KEYS: frozenset[bytes] = frozenset(
    decode_key(k)
    for k in (
        "KERrni5dM7zSQ2QNF/x21Oro8PaNCT1Pm470n2uhl0w=",  # config/node.example.toml (alice)
        "SFPHMQ/RcbF6M5arcQx7+nvrQFyOs4brE08My1v8FXE=",  # config/rendezvous.example.toml
    )
)
#: Public keys in the examples: those of the private keys above, and bob's placeholder.
EXAMPLE_PUBLIC_KEYS: frozenset[bytes] = frozenset(
    {public_key(k) for k in EXAMPLE_PRIVATE_KEYS}
    | {decode_key("s9g+1y0ga5RhsJXYuNjrNaWDbMAWJSkQK8TqKqoGXkI=")}
)
#: Placeholder secrets of the examples (TURN passwords, the REST-API shared secret).
PLACEHOLDER_SECRETS: frozenset[str] = frozenset({"change-me", "replace-with-32-random-characters"})

KEY_HINT = "generate your own with 'p2ptun genkey'; 'p2ptun pubkey' prints its public key"
SECRET_HINT = "replace it with a random value, e.g. the output of 'p2ptun genkey'"


def example_key_problem(key: bytes, *, private: bool) -> str | None:
    """Why ``key`` must not be used (a published example key), or None."""
    if private and (key in EXAMPLE_PRIVATE_KEYS or public_key(key) in EXAMPLE_PUBLIC_KEYS):
        return "is the example private key published with p2ptun"
    if not private and key in EXAMPLE_PUBLIC_KEYS:
        return "is an example public key published with p2ptun (its private key is public)"
    return None


def placeholder_problem(secret: str) -> str | None:
    """Why ``secret`` must not be used (a placeholder of the examples), or None."""
    if secret.strip().lower() in PLACEHOLDER_SECRETS:
        return f"{secret!r} is the placeholder of the example config"
    return None

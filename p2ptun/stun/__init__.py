"""stun package."""

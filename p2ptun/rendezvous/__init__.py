"""rendezvous package."""

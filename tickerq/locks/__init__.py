"""Distributed locks with fencing tokens and renewal."""

"""Stores: where action results (AC) and blobs (CAS) live. local.py is the local layer."""

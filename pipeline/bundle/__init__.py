"""Bundles: building, verifying and serving what ships to a device (the files it ships are in files/)."""

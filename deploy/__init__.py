"""Deployment: images, manifests, and the checks that run them (deploy/checks)."""

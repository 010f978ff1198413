#!/usr/bin/env bash
# A local Python 3.11 base image from Debian's packages, for building offline (no registry):
# needs root, debootstrap and podman. About 2 minutes.
set -euo pipefail
TAG=${TAG:-localhost/debian-python:bookworm}
mirror=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs" "$rootfs.tar"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}"
# The downloaded .debs and package lists are half the size of the result; images never need them.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -cf "$rootfs.tar" .
podman import "$rootfs.tar" "$TAG"

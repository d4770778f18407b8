#!/bin/sh
# Before removal, stop and disable vmagent. Not before an upgrade: deb passes
# "upgrade" and rpm passes 1 (versions left) then, and postinstall restarts it.
set -e
case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac
command -v systemctl >/dev/null || exit 0
systemctl disable --now vmagent.service || true

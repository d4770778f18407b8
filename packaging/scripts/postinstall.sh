#!/bin/sh
# After install or upgrade: enable vmagent, but start it only once hostctl has
# installed its certificate (hostctl vm onboard starts it then).
set -e
command -v systemctl >/dev/null || exit 0
booted=no
[ -d /run/systemd/system ] && booted=yes # not in a container or image build
[ "$booted" = no ] || systemctl daemon-reload
systemctl enable vmagent.service
if [ "$booted" = yes ] && [ -f /etc/meshvm/agent/server.pem ]; then
	# Also restarts onto the new binary after an upgrade. A failure is the
	# agent's, not the package's: say where to look and finish the install.
	systemctl restart vmagent.service ||
		echo "vmagent did not start: see journalctl -u vmagent" >&2
fi

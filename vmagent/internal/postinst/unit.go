package postinst

import "fmt"

// Paths of the sidecar unit and its enablement link.
const (
	UnitPath     = "/etc/systemd/system/istio.service"
	UnitWantsDir = "/etc/systemd/system/multi-user.target.wants"
	UnitLink     = UnitWantsDir + "/istio.service"
)

// Unit renders the istio systemd unit. It replaces the package's istio.service
// and istio-start.sh: vmagent prepares as root (the token /run lost at boot,
// the environment istio-start.sh computes, the capture rules through
// `pilot-agent istio-iptables`), then pilot-agent runs as istio-proxy without
// sudo, and the rules are cleaned when the unit stops.
func Unit(agentPath string) string {
	return fmt.Sprintf(`# Managed by vmagent: rewritten on every install, removed on uninstall.
[Unit]
Description=Istio sidecar (pilot-agent and Envoy), managed by vmagent
Documentation=https://istio.io/latest/docs/setup/install/virtual-machine/
Wants=network-online.target
# cloud-init's network stage (cloud-init.service, cloud-init-network.service
# since 24.3) rewrites /etc/hosts on every boot when manage_etc_hosts is on,
# as Multipass sets it: prepare runs after it and puts meshvm's block back.
# Not cloud-final.service: it is After=multi-user.target, which wants this
# unit, so that order would be a cycle.
After=network-online.target cloud-init.service cloud-init-network.service
StartLimitIntervalSec=0

[Service]
Type=simple
WorkingDirectory=/
# '+' runs as root: restore the token and the hosts block, write %[2]s,
# install the capture rules.
ExecStartPre=+%[1]s sidecar prepare
# Optional at load time: systemd reads it for every command, ExecStartPre
# included, and prepare is what writes it.
EnvironmentFile=-%[2]s
# $ISTIO_AGENT_FLAGS splits into words, like istio-start.sh's flags array.
ExecStart=/usr/local/bin/pilot-agent proxy $ISTIO_AGENT_FLAGS
ExecStopPost=+%[1]s sidecar cleanup
User=istio-proxy
Group=istio-proxy
Restart=always
RestartSec=10
KillMode=mixed
TimeoutStopSec=30s

[Install]
WantedBy=multi-user.target
`, agentPath, SidecarEnvPath)
}

// SidecarEnvPath is the environment `vmagent sidecar prepare` computes for
// pilot-agent, in systemd's EnvironmentFile syntax.
const SidecarEnvPath = "/run/meshvm/sidecar.env"

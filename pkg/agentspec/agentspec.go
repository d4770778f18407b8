// Package agentspec is what hostctl and vmagent agree on besides the proto:
// the agent's port, where the mesh token lives on the VM, and the keepalive
// timings the two ends must keep compatible. Named once here so the two
// sides cannot drift apart.
package agentspec

import "time"

// Port is where vmagent listens (packaging/vmagent.yaml's listen).
const Port = 7443

// TokenPath is the VM's istio-token, which pilot-agent reads.
const TokenPath = "/var/run/secrets/tokens/istio-token"

// Callers ping a quiet connection every KeepaliveTime and drop it when no
// answer comes within KeepaliveTimeout: the sidecar's capture rules can cut
// it silently. The agent closes a connection pinged more often than every
// KeepaliveMinTime, so it must stay at or below KeepaliveTime.
const (
	KeepaliveTime    = 10 * time.Second
	KeepaliveTimeout = 5 * time.Second
	KeepaliveMinTime = 5 * time.Second
)

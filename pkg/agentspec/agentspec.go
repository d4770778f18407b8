// Package agentspec is what hostctl and vmagent agree on besides the proto:
// the agent's port, where the mesh token lives on the VM, and the keepalive
// timings the two ends must keep compatible. Named once here so the two
// sides cannot drift apart.
package agentspec

import (
	"net/netip"
	"slices"
	"time"
)

// Port is where vmagent listens (packaging/vmagent.yaml's listen).
const Port = 7443

// TokenPath is the VM's istio-token, which pilot-agent reads.
const TokenPath = "/var/run/secrets/tokens/istio-token"

// FollowAddressKey set to "true" in cluster.env says its ISTIO_SVC_IP is
// one of the VM's own interface addresses, as its machine provider
// reported it: when the VM no longer has that address (it moved), the agent
// starts the proxy at the VM's first address instead, so istiod registers
// the VM where it now is and meshvm can find it there. Without the key the
// address may be a NAT'd one the VM never holds, and is used as written.
const FollowAddressKey = "MESHVM_FOLLOW_ADDRESS"

// WatchCapability is announced by an agent that serves Watch: a caller
// falls back to polling GetStatus without it (an older agent).
const WatchCapability = "watch.v1"

// Callers ping a quiet connection every KeepaliveTime and drop it when no
// answer comes within KeepaliveTimeout: the sidecar's capture rules can cut
// it silently. The agent closes a connection pinged more often than every
// KeepaliveMinTime, so it must stay at or below KeepaliveTime.
const (
	KeepaliveTime    = 10 * time.Second
	KeepaliveTimeout = 5 * time.Second
	KeepaliveMinTime = 5 * time.Second
)

// Cloud instance-metadata endpoints outside 169.254.0.0/16: Alibaba's
// 100.100.100.200 and AWS's IPv6 fd00:ec2::254. The agent never calls them
// for a caller, and never points a hosts entry at them.
var metadataAddrs = []netip.Addr{netip.MustParseAddr("100.100.100.200"), netip.MustParseAddr("fd00:ec2::254")}

// MetadataAddress reports whether a is where a cloud may serve instance
// metadata (credentials among it): IPv4 link-local (169.254.0.0/16), or
// one of metadataAddrs. IPv6 link-local stays a peer's address on a LAN.
func MetadataAddress(a netip.Addr) bool {
	a = a.Unmap()
	return (a.Is4() && a.IsLinkLocalUnicast()) || slices.Contains(metadataAddrs, a.WithZone(""))
}

package agentspec

import (
	"net/netip"
	"testing"
)

// An agent that refused the callers' pings would close every quiet connection.
func TestKeepaliveEndsAgree(t *testing.T) {
	if KeepaliveMinTime > KeepaliveTime {
		t.Errorf("the agent allows pings every %s, callers send them every %s", KeepaliveMinTime, KeepaliveTime)
	}
}

func TestMetadataAddress(t *testing.T) {
	for s, want := range map[string]bool{
		"169.254.169.254": true, "100.100.100.200": true, "fd00:ec2::254": true, "fe80::1%eth0": false,
		"::ffff:169.254.169.254": true, "10.0.0.1": false, "100.100.100.201": false, "192.168.64.5": false,
	} {
		if got := MetadataAddress(netip.MustParseAddr(s)); got != want {
			t.Errorf("MetadataAddress(%s) = %v, want %v", s, got, want)
		}
	}
}

package agentspec

import "testing"

// An agent that refused the callers' pings would close every quiet connection.
func TestKeepaliveEndsAgree(t *testing.T) {
	if KeepaliveMinTime > KeepaliveTime {
		t.Errorf("the agent allows pings every %s, callers send them every %s", KeepaliveMinTime, KeepaliveTime)
	}
}

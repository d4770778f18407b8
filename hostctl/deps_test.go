package main

import (
	"testing"

	"github.com/meshvm/meshvm/internal/deptest"
)

// hostctl runs on the workstation: nothing of what runs on the VM reaches
// it beyond the packages both programs share (pkg/ itself), and its
// terminal layer (hostctl/internal/cli) leaves the cluster, the machines and the
// agents to pkg/host/fleet.
func TestHostctlDependencies(t *testing.T) {
	m := deptest.Module + "/"
	deptest.Forbid(t, m+"hostctl", m+"vmagent", m+"bench")
	deptest.Direct(t, m+"hostctl/internal/cli", "k8s.io/", "istio.io/", "sigs.k8s.io/",
		m+"pkg/machine", m+"pkg/host/agentclient", m+"pkg/host/onboard", m+"pkg/mesh/workload", m+"pkg/mesh/istioinstall", m+"lab/stack", m+"lab/cluster")
}

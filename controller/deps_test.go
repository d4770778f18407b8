package main

import (
	"testing"

	"github.com/meshvm/meshvm/internal/deptest"
)

// The controller runs in the cluster: no terminal, no lab, no workstation
// driver and nothing of the agent; it reaches VMs through the per-VM core.
func TestControllerDependencies(t *testing.T) {
	m := deptest.Module + "/"
	deptest.Forbid(t, m+"controller", "github.com/spf13/cobra", m+"hostctl", m+"lab", m+"pkg/host/fleet", m+"pkg/host/fleetmode", m+"vmagent", m+"bench")
}

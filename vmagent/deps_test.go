package main

import (
	"testing"

	"github.com/meshvm/meshvm/internal/deptest"
)

// The agent ships to every VM: keep it small and free of the workstation's
// side (tailscale's deptest, LXD's lxd-agent deps list). It builds on
// vmagent/... and the packages both programs share (pkg/ itself).
func TestAgentDependencies(t *testing.T) {
	m := deptest.Module + "/"
	deptest.Forbid(t, m+"vmagent",
		"k8s.io/", "istio.io/", "sigs.k8s.io/controller-runtime", "github.com/google/go-containerregistry", "golang.org/x/crypto/ssh",
		m+"hostctl", m+"pkg/host", m+"pkg/mesh", m+"pkg/machine", m+"lab", m+"bench")
}

package vmcore_test

import (
	"testing"

	"github.com/meshvm/meshvm/internal/deptest"
)

// The core is what a controller links: no terminal, no lab, and no
// controller framework of its own (the controller brings that).
func TestCoreDependencies(t *testing.T) {
	m := deptest.Module + "/"
	for _, pkg := range []string{"pkg/host/vmcore", "pkg/host/vmcore/storetest"} {
		deptest.Forbid(t, m+pkg,
			"github.com/spf13/cobra", m+"hostctl", m+"lab", m+"pkg/host/fleet",
			"sigs.k8s.io/controller-runtime", m+"vmagent")
	}
}

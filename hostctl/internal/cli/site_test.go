package cli

import (
	"errors"
	"testing"

	"github.com/meshvm/meshvm/pkg/host/config"
)

// Off Linux a config asking for the lab, as its cluster or only for its VMs,
// is refused up front as a usage mistake (exit 2) with the reason; other
// sites, and the lab on Linux, pass.
func TestLabPossible(t *testing.T) {
	notHere := errors.New("the lab runs on Linux only")
	lab := config.Default()
	lab.Cluster.Provider = config.Lab
	labVMs := config.Default()
	labVMs.Cluster.Provider, labVMs.Machines = config.Kubeconfig, config.Lab
	multipass := config.Default()
	for _, c := range []struct {
		name        string
		cfg         config.Config
		unsupported error
		refused     bool
	}{
		{"lab cluster off Linux", lab, notHere, true},
		{"lab machines off Linux", labVMs, notHere, true},
		{"multipass off Linux", multipass, notHere, false},
		{"lab on Linux", lab, nil, false},
	} {
		err := labPossible(c.cfg, c.unsupported)
		if (err != nil) != c.refused {
			t.Errorf("%s: labPossible = %v, refused want %v", c.name, err, c.refused)
			continue
		}
		if c.refused && (!errors.Is(err, notHere) || ExitCode(err) != ExitUsage) {
			t.Errorf("%s: %v exits %d, want the reason and exit %d", c.name, err, ExitCode(err), ExitUsage)
		}
	}
}

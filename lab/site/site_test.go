package site

import (
	"testing"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/reason"
)

// cluster status asks the site for the processes it runs: the lab names
// its control plane, stopped here.
func TestLabProcesses(t *testing.T) {
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var lab fleet.ClusterLifecycle = newLabSite(config.Default(), state)
	got := lab.Processes()
	if len(got) != 3 || got[0].Name != "etcd" || got[0].State != "stopped" || got[0].Reason != reason.ClusterStopped {
		t.Errorf("lab: got %+v, want etcd, kube-apiserver and kube-controller-manager stopped", got)
	}
}

// The lab builds one Istio: another istio.version is refused with the fix.
func TestLabRefusesAnotherIstioVersion(t *testing.T) {
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Istio.Version = "1.0.0"
	if _, err := Open(cfg, state); err == nil {
		t.Fatal("got no error for istio.version 1.0.0 on the lab")
	}
	cfg.Istio.Version = istioinstall.EmbeddedVersion
	if _, err := Open(cfg, state); err != nil {
		t.Fatal(err)
	}
}

package fleet

import (
	"testing"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/reason"
)

// cluster status asks the site for the processes it runs instead of
// type-asserting the lab: the lab names its control plane, stopped here;
// another cluster runs its own.
func TestClusterProcessesComeFromTheSite(t *testing.T) {
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var lab Site = newLabSite(config.Default(), state, labMachines(state))
	got := lab.Processes()
	if len(got) != 3 || got[0].Name != "etcd" || got[0].State != "stopped" || got[0].Reason != reason.ClusterStopped {
		t.Errorf("lab: got %+v, want etcd, kube-apiserver and kube-controller-manager stopped", got)
	}
	var yours Site = &clusterSite{cfg: config.Default(), state: state}
	if got := yours.Processes(); got != nil {
		t.Errorf("cluster of yours: got %+v, want none", got)
	}
}

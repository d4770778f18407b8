package fleetmode

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/lab/cluster/clustertest"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/mtls"
	"github.com/meshvm/meshvm/pkg/reason"
)

// kubeconfigSite is a site known only by its kubeconfig: all UseCluster
// asks of one.
type kubeconfigSite struct {
	fleet.Site
	kc string
}

func (s kubeconfigSite) Kubeconfig() string { return s.kc }

// A workstation with a fresh state directory reads the cluster's store:
// with no agent CA there it is told which command puts one there; with
// one it calls agents as a person (its client certificate, signed by the
// cluster's CA, kept in its state directory) and never holds the CA.
func TestUseClusterFromAFreshWorkstation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	rc, kubeconfig := clustertest.Start(ctx, t)
	kc := kubernetes.NewForConfigOrDie(rc)
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	on := true
	cfg.Fleet.Enabled = &on
	f := &fleet.Fleet{Config: cfg, State: state, Site: kubeconfigSite{kc: kubeconfig}}

	var r *reason.Error
	if err := UseCluster(ctx, f); !errors.As(err, &r) || r.Reason != reason.NoFleetStore || !strings.Contains(err.Error(), fleetstore.CASecret) || f.Records != nil {
		t.Fatalf("no agent CA in the cluster: got %v, want %s naming Secret %s", err, reason.NoFleetStore, fleetstore.CASecret)
	}

	if err := fleetstore.EnsureNamespace(ctx, kc, fleetstore.DefaultNamespace); err != nil {
		t.Fatal(err)
	}
	ca, err := mtls.NewCA("meshvm agent CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fleetstore.PutCA(ctx, kc, fleetstore.DefaultNamespace, ca); err != nil {
		t.Fatal(err)
	}
	store := fleetstore.New(ctx, kc, "", cfg.Workload.Namespace)
	if _, err := store.Put("vm1", fleetstore.Records{Address: "10.0.0.9", Files: map[string][]byte{"hosts": []byte("10.0.0.1 istiod.istio-system.svc\n")}}); err != nil {
		t.Fatal(err)
	}
	if err := UseCluster(ctx, f); err != nil || f.Records == nil {
		t.Fatalf("UseCluster: %v", err)
	}
	if addr, err := f.Records.Address("vm1"); err != nil || addr != "10.0.0.9" {
		t.Errorf("vm1's address from the cluster: %q %v", addr, err)
	}
	if h, err := f.Records.(fleet.HostsRecords).Hosts("vm1"); err != nil || !strings.Contains(string(h), "istiod") {
		t.Errorf("vm1's hosts block from the cluster: %q %v", h, err)
	}
	if _, err := f.Records.AgentTLS("vm1"); err != nil {
		t.Fatalf("AgentTLS: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state.Path("agent-ca"), "hostctl.pem")); err != nil {
		t.Errorf("no client certificate of this workstation's: %v", err)
	}
	for _, held := range []string{"ca.pem", "ca-key.pem"} {
		if _, err := os.Stat(filepath.Join(state.Path("agent-ca"), held)); err == nil {
			t.Errorf("the workstation holds the agent CA's %s", held)
		}
	}
}

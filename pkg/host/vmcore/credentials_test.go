package vmcore

import (
	"errors"
	"testing"
	"time"

	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/machine/machinetest"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// A stopped VM's token is not renewed: RenewToken says so with the
// machine's state, and issues nothing.
func TestRenewTokenLeavesAStoppedVM(t *testing.T) {
	store, _ := openStore(t, "vm1")
	kc := fake.NewClientset()
	deps := Deps{Machines: machinetest.New(machine.Machine{Name: "vm1", State: machine.Stopped}),
		Kube: workload.Clients{Kube: kc, Istio: istiofake.NewSimpleClientset()}, Workload: group}
	r, err := RenewToken(testCtx(t), "vm1", time.Hour, true, store, deps)
	if !errors.Is(err, ErrNotRunning) || r.MachineState != "stopped" {
		t.Errorf("got %+v %v, want ErrNotRunning of a stopped machine", r, err)
	}
	for _, a := range kc.Actions() {
		if a.GetVerb() == "create" {
			t.Errorf("issued for a stopped VM: %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}
	if tok, _ := store.Token("vm1"); len(tok) != 0 {
		t.Errorf("token kept: %q, want none", tok)
	}
}

// Booting records the entry the last boot's proxy left, so that only a
// new connection counts; a VM never onboarded has none to record.
func TestBootingRecordsTheLastBootsEntry(t *testing.T) {
	ctx := testCtx(t)
	store, _ := openStore(t, "vm1")
	probed := time.Now().Add(-time.Minute).Truncate(time.Second)
	deps := Deps{Kube: workload.Clients{Kube: fake.NewClientset(), Istio: istiofake.NewSimpleClientset(entryAt("external-app-10.0.0.7", "10.0.0.7", "c1", "True", probed))},
		Workload: group}
	if err := Booting(ctx, "vm1", "10.0.0.7", store, deps); err != nil {
		t.Fatal(err)
	}
	r, ok, err := store.LastRestart("vm1")
	if err != nil || !ok || r.EntryBeforeRestart != "external-app-10.0.0.7" || r.EntryConnectedAt != "c1" || !r.EntryProbedAt.Equal(probed) {
		t.Errorf("got %+v %v %v", r, ok, err)
	}
	if err := Booting(ctx, "vm1", "", store, deps); err != nil {
		t.Fatal(err)
	}
	if r, _, _ := store.LastRestart("vm1"); r.EntryBeforeRestart != "" {
		t.Errorf("no address: got %+v, want no entry recorded", r)
	}
}

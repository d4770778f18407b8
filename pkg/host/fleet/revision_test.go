package fleet

import (
	"testing"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
)

// The WorkloadGroup carries a revision only while every VM shares it: a
// VM on another one (or onboarded before meshvm kept records: the
// default) leaves it unlabelled, so both istiods serve the group.
func TestGroupRevision(t *testing.T) {
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.VMs = []config.VM{{Name: "a"}, {Name: "b"}}
	if got := groupRevision(cfg, vmcore.DirStore{Dir: state}, "canary"); got != "canary" {
		t.Errorf("no VM onboarded yet, joining canary: %q, want canary", got)
	}
	if got := groupRevision(cfg, vmcore.DirStore{Dir: state}, ""); got != "default" {
		t.Errorf("no VM onboarded yet, joining the default: %q, want default", got)
	}
	if err := (vmcore.DirStore{Dir: state}).SetJoined("a", vmcore.Joined{Revision: "canary", Istio: "1.31.0"}); err != nil {
		t.Fatal(err)
	}
	if got := groupRevision(cfg, vmcore.DirStore{Dir: state}, ""); got != "" {
		t.Errorf("a on canary, b about to join the default: %q, want none", got)
	}
	// b was onboarded by a meshvm that kept no record: it is on the default.
	if err := state.WriteSecret(addressFile("b"), []byte("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	if got := vmRevision(vmcore.DirStore{Dir: state}, "b", "canary"); got != "" {
		t.Errorf("b onboarded without a record: revision %q, want the default", got)
	}
	if got := groupRevision(cfg, vmcore.DirStore{Dir: state}, "canary"); got != "" {
		t.Errorf("a on canary, b on the default: %q, want none", got)
	}
	if err := (vmcore.DirStore{Dir: state}).SetJoined("b", vmcore.Joined{Revision: "canary"}); err != nil {
		t.Fatal(err)
	}
	if got := groupRevision(cfg, vmcore.DirStore{Dir: state}, ""); got != "canary" {
		t.Errorf("both on canary: %q, want canary", got)
	}
	if j, ok := joinedOf(vmcore.DirStore{Dir: state}, "a"); !ok || j.Istio != "1.31.0" {
		t.Errorf("a's record: %+v %v", j, ok)
	}
}

package fleet

import (
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// joinedOf is the VM's record of what it was last onboarded onto; ok is
// false for a VM onboarded by an older meshvm or never (it is then on the
// default revision, or about to join the site's).
func joinedOf(store vmcore.Store, vm string) (vmcore.Joined, bool) {
	j, ok, _ := store.Joined(vm)
	return j, ok
}

// vmRevision is the revision the VM is on, as the per-VM core judges it.
func vmRevision(store vmcore.Store, vm, siteRev string) string {
	rev, _ := vmcore.VMRevision(store, vm, siteRev)
	return rev
}

// revisionName is how a revision is shown: "" is "default".
func revisionName(rev string) string { return workloadfiles.RevisionName(rev) }

func sameRevision(a, b string) bool { return revisionName(a) == revisionName(b) }

// groupRevision is the istio.io/rev the WorkloadGroup carries: the one
// revision all the config's VMs are on (new ones are about to join rev),
// else none, so that every revision's istiod sees the group while VMs are
// split between them.
func groupRevision(cfg config.Config, store vmcore.Store, rev string) string {
	revs := map[string]bool{}
	for _, vm := range cfg.VMs {
		revs[revisionName(vmRevision(store, vm.Name, rev))] = true
	}
	if len(revs) != 1 {
		return ""
	}
	for r := range revs {
		return r
	}
	return ""
}

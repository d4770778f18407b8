package fleet

import (
	"encoding/json"
	"path/filepath"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// joined is what a VM was last onboarded onto: the Istio revision its files
// point at and the proxy version it was given (the running istiod's).
type joined struct {
	Revision string `json:"revision"`
	Istio    string `json:"istio"`
}

func joinedFile(vm string) string { return filepath.Join("vms", vm, "istio.json") }

// joinedOf is the VM's record; ok is false for a VM onboarded by an older
// meshvm or never (it is then on the default revision, or about to join
// the site's).
func joinedOf(state *statedir.Dir, vm string) (joined, bool) {
	var j joined
	b, err := state.ReadFile(joinedFile(vm))
	if err != nil || json.Unmarshal(b, &j) != nil {
		return joined{}, false
	}
	return j, true
}

func recordJoined(state *statedir.Dir, vm string, j joined) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return state.WriteSecret(joinedFile(vm), b)
}

// vmRevision is the revision the VM is on: its record's; a VM onboarded
// before meshvm kept one is on the default; a new one joins siteRev.
func vmRevision(state *statedir.Dir, vm, siteRev string) string {
	if j, ok := joinedOf(state, vm); ok {
		return j.Revision
	}
	if onboardedAddress(state, vm) != "" {
		return ""
	}
	return siteRev
}

// revisionName is how a revision is shown: "" is "default".
func revisionName(rev string) string { return workloadfiles.RevisionName(rev) }

func sameRevision(a, b string) bool { return revisionName(a) == revisionName(b) }

// groupRevision is the istio.io/rev the WorkloadGroup carries: the one
// revision all the config's VMs are on (new ones are about to join rev),
// else none, so that every revision's istiod sees the group while VMs are
// split between them.
func groupRevision(cfg config.Config, state *statedir.Dir, rev string) string {
	revs := map[string]bool{}
	for _, vm := range cfg.VMs {
		revs[revisionName(vmRevision(state, vm.Name, rev))] = true
	}
	if len(revs) != 1 {
		return ""
	}
	for r := range revs {
		return r
	}
	return ""
}

package vmcore

import (
	"context"
	"errors"

	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// Removal is what Delete found and did.
type Removal struct {
	// AgentRemoved: the agent undid its changes and was removed.
	AgentRemoved bool
	// EntryAddress is where the VM's WorkloadEntry was looked for ("" when
	// the VM has no address and was never onboarded); Entry the one deleted
	// ("" when none was there).
	EntryAddress, Entry string
	// Revoked: the Secret the VM's tokens are bound to was deleted (false:
	// there was none: already revoked, or never onboarded).
	Revoked bool
}

// Delete takes VM name out of the mesh, m being its machine as last seen:
// the agent's changes undone and the agent removed where removeAgent (a
// machine that is not the deleter's to delete), its WorkloadEntry deleted,
// its token revoked. Each step runs whatever the others did, so a VM that
// no longer answers still loses its entry and token; the errors are joined.
func Delete(ctx context.Context, name string, m machine.Machine, removeAgent bool, store Store, deps Deps) (Removal, error) {
	var r Removal
	var errs []error
	if removeAgent {
		err := RemoveAgent(ctx, m, store, deps.Machines)
		r.AgentRemoved = err == nil
		errs = append(errs, err)
	}
	var err error
	r.EntryAddress, r.Entry, err = DeleteEntry(ctx, name, m, store, deps)
	errs = append(errs, err)
	r.Revoked, err = Revoke(ctx, name, deps)
	errs = append(errs, err)
	return r, errors.Join(errs...)
}

// RemoveAgent has m's agent undo what it did (sidecar, capture rules, hosts
// block, files, users) and removes the agent through the machine provider.
func RemoveAgent(ctx context.Context, m machine.Machine, store Store, machines machine.Provider) error {
	c, err := DialAgent(m, store)
	if err != nil {
		return err
	}
	defer c.Close()
	return onboard.RemoveAgentWith(ctx, machines, c, m)
}

// UndoAgent has m's agent undo what it did (sidecar, capture rules, hosts
// block, files, users) and leaves the agent installed: what a controller,
// which reaches VMs only through their agents, can take back.
func UndoAgent(ctx context.Context, m machine.Machine, store Store) error {
	c, err := DialAgent(m, store)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Uninstall(ctx, false)
	return err
}

// DeleteEntry deletes the VM's WorkloadEntry, at its address or, when it
// reports none (a stopped machine), where it was last onboarded: istiod
// would drop it after its grace period; it is not left to chance. It says
// where it looked ("" when nowhere) and what it deleted.
func DeleteEntry(ctx context.Context, name string, m machine.Machine, store Store, deps Deps) (addr, gone string, err error) {
	if addr = m.Address(); addr == "" {
		if addr, err = store.Address(name); err != nil || addr == "" {
			return "", "", err
		}
	}
	gone, err = workload.DeleteEntry(ctx, deps.Kube, deps.Workload, addr)
	return addr, gone, err
}

// Revoke deletes the Secret the VM's tokens are bound to: the API server
// refuses them from then on. It says whether there was one.
func Revoke(ctx context.Context, name string, deps Deps) (bool, error) {
	how, err := workload.Revoke(ctx, deps.Kube.Kube, deps.Workload.Namespace, name)
	return how == ownership.Deleted, err
}

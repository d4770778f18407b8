package fleet

import (
	"context"
	"os"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/machine"
)

// RemoveVMs removes every VM of the config and its state, all at once as up
// brings them (each waits for its machine's shutdown); say is told how each
// went.
func (f *Fleet) RemoveVMs(ctx context.Context, p Reporter) error {
	cfg, state, s := f.Config, f.State, f.Site
	return eachVM(cfg.Parallel, cfg.VMs, func(vm config.VM) error {
		how, err := removeVM(ctx, cfg, state, s.Machines(), vm.Name)
		if err != nil {
			return err
		}
		p.Say("VM %s %s", vm.Name, how)
		// Its certificate and workload files belonged to that machine and cluster.
		return os.RemoveAll(state.Path("vms", vm.Name))
	})
}

// removeVM deletes a VM hostctl created; one brought over SSH is not ours to
// delete: the agent reverts what it did and is removed itself. It says
// which happened.
func removeVM(ctx context.Context, cfg config.Config, state *statedir.Dir, machines machine.Provider, name string) (string, error) {
	if cfg.MachineProvider() != config.SSH {
		return "deleted", machines.Delete(ctx, name)
	}
	m, err := machines.Info(ctx, name)
	if err != nil {
		return "", err
	}
	if _, err := removeApp(ctx, machines, name); err != nil {
		return "", err
	}
	return "left as it was before up (hostctl's app, sidecar, postinst and agent removed; the machine is yours)",
		onboard.RemoveAgent(ctx, onboard.Deps{Provider: machines, State: state}, m)
}

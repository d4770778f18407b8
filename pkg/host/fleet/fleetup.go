package fleet

import (
	"context"
	"errors"
	"os"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
)

// FleetUpSteps are the steps up reports in fleet mode: the workstation's
// (the site, each machine, app and agent), then the controller's.
var FleetUpSteps = []progress.Step{progress.ControlPlane, progress.Workload, progress.Machine, progress.App, progress.Agent, progress.Controller}

// Provisioned is one VM as the workstation left it in fleet mode: its
// machine running, meshvm's app converged, its agent answering.
type Provisioned struct {
	Name    string
	Address string
	RunsApp bool
}

// Provision is up's workstation half in fleet mode: the site's cluster,
// Istio and workload converged; then store (the cluster's store, which
// needs the cluster) is opened; then each VM's machine, app and agent are
// converged through the core with that store, ending where onboarding
// begins: only the workstation can create machines and install agents,
// and the controller onboards.
func (f *Fleet) Provision(ctx context.Context, p Reporter, store func(context.Context) (vmcore.Store, error)) ([]Provisioned, error) {
	r, err := start(ctx, p, f)
	if err != nil {
		return nil, err
	}
	if r.store, err = store(ctx); err != nil {
		return nil, err
	}
	out := make([]Provisioned, len(f.Config.VMs))
	err = eachVM(f.Config.Parallel, f.Config.VMs, func(vm config.VM) error {
		spec := r.provisionSpec(vm)
		spec.AgentOnly = true
		if _, err := r.converge(ctx, spec, drive{tellAgent: true}); err != nil {
			return err
		}
		m, err := r.machines.Info(ctx, vm.Name)
		if err != nil {
			return err
		}
		i := indexOf(f.Config.VMs, vm.Name)
		out[i] = Provisioned{Name: vm.Name, Address: m.Address(), RunsApp: f.Config.RunsApp(vm)}
		return nil
	})
	return out, err
}

func indexOf(vms []config.VM, name string) int {
	for i, vm := range vms {
		if vm.Name == name {
			return i
		}
	}
	return -1
}

// RemoveMachine deletes VM name's machine (an SSH machine is left as it
// was before up) and its state on the workstation: in fleet mode, once
// its MeshVM is gone, its token revoked and its WorkloadEntry deleted by
// the controller.
func (f *Fleet) RemoveMachine(ctx context.Context, name string, p Reporter) error {
	_, err := f.Site.Machines().Info(ctx, name)
	switch {
	case errors.Is(err, machine.ErrNotFound):
		p.Say("no machine %s", name)
	case err != nil:
		return err
	default:
		how, err := removeVM(ctx, f.Config, f.State, f.Site.Machines(), name)
		if err != nil {
			return err
		}
		p.Say("machine %s %s", name, how)
	}
	return os.RemoveAll(f.State.Path("vms", name))
}

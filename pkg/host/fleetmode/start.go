package fleetmode

import (
	"context"
	"fmt"
	"time"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/reason"
)

// Start is vm start in fleet mode: the workstation powers the machines on
// (only it can), then waits until each VM's agent answers and its MeshVM
// is Ready, which the controller judges from the new boot; nothing is sent
// from here, and no record written.
func Start(ctx context.Context, f *fleet.Fleet, p fleet.Reporter, vms []config.VM) error {
	dc, err := Dynamic(f)
	if err != nil {
		return err
	}
	if err := UseCluster(ctx, f); err != nil {
		return err
	}
	var names []string
	for _, vm := range vms {
		m, err := f.Site.Machines().Launch(ctx, machine.Spec{Name: vm.Name})
		if err != nil {
			return reason.Wrap(fmt.Errorf("%s: %w", vm.Name, err), reason.VMNotFound, vm.Name)
		}
		p.Step(progress.Machine, vm.Name, "%s at %s", m.State.Lower(), m.Address())
		if err := awaitAgent(ctx, f.Records, vm.Name, m.Address()); err != nil {
			return fmt.Errorf("%s: %w", vm.Name, err)
		}
		p.Step(progress.Agent, vm.Name, "answering at %s", m.Address())
		names = append(names, vm.Name)
	}
	return WaitReady(ctx, dc, f.Config.Workload.Namespace, names, func(vm, format string, args ...any) { p.Step(progress.Controller, vm, format, args...) })
}

// awaitAgent waits until VM vm's agent answers at addr, over the agent
// CA's mTLS: the machine booted.
func awaitAgent(ctx context.Context, store vmcore.Store, vm, addr string) error {
	for {
		_, err := vmcore.ProveAgent(ctx, vm, addr, store)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return reason.Wrap(fmt.Errorf("its agent did not answer at %s: %w", addr, err), reason.NotBackOnline, vm)
		case <-time.After(time.Second):
		}
	}
}

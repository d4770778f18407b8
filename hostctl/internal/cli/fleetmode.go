package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/fleetmode"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/mesh/fleetinstall"
)

// Fleet mode (fleet.enabled): the commands below act through MeshVMs and
// wait on what the controller reports; without it they drive the per-VM
// core themselves, as they always have.

// upFleet is up in fleet mode.
func upFleet(ctx context.Context, cmd *cobra.Command, f *fleet.Fleet) error {
	p := newLines(cmd.ErrOrStderr(), "up: ", fleet.FleetUpSteps...).Reporter()
	return fleetmode.Up(ctx, f, p, func(ctx context.Context) error { return ensureController(ctx, f, p) })
}

// ensureController has the controller running where fleet mode's cluster
// runs it: the lab's process, the Deployment on the recipe's k3s (fleet
// install's path); on a cluster of yours it must have been installed
// (fleet install --registry), which is the cluster owner's call.
func ensureController(ctx context.Context, f *fleet.Fleet, p progress.Reporter) error {
	switch f.Config.Cluster.Provider {
	case config.Lab:
		_, err := fleetmode.StartController(ctx, f, lineWriter{p})
		return err
	case config.Kubeconfig:
		installed, err := fleetmode.ControllerInstalled(ctx, f)
		if err == nil && !installed {
			return fmt.Errorf("fleet mode is on, but no controller runs in this cluster (no Deployment %s/%s): install it with hostctl fleet install --registry REPOSITORY, or set fleet.enabled: false",
				fleetinstall.DefaultNamespace, fleetinstall.Name)
		}
		if err == nil {
			p.Step(progress.Controller, "", "Deployment %s/%s present (hostctl fleet install)", fleetinstall.DefaultNamespace, fleetinstall.Name)
		}
		return err
	}
	_, err := f.InstallController(ctx, p, fleet.ControllerOptions{Binary: controllerBinary("")})
	return err
}

// requestFleet asks the controller to onboard (annotation
// meshvm.io/onboard; restart: with the sidecar restarted) or renew
// (meshvm.io/renew) the VMs named, and waits until it has, telling what it
// did.
func requestFleet(ctx context.Context, w io.Writer, f *fleet.Fleet, names []string, annotation, verb string, restart bool) error {
	dc, err := fleetmode.Dynamic(f)
	if err != nil {
		return err
	}
	ns := f.Config.Workload.Namespace
	request := func() (string, error) { return fleetmode.Request(ctx, dc, ns, names, annotation) }
	if restart {
		request = func() (string, error) { return fleetmode.RequestRestart(ctx, dc, ns, names) }
	}
	value, err := request()
	if err != nil {
		return err
	}
	done := func(r fleetmode.Row) bool { return r.OnboardRequest == value }
	if annotation == v1alpha1.AnnotationRenew {
		done = func(r fleetmode.Row) bool { return r.RenewRequest == value }
	}
	p := newProgress(w, progress.Controller).Reporter()
	rows, err := fleetmode.WaitRequest(ctx, dc, ns, names, done, func(vm, format string, args ...any) { p.Step(progress.Controller, vm, format, args...) })
	if err != nil {
		return err
	}
	for _, r := range rows {
		expires := "-"
		if r.TokenExpires != nil {
			expires = r.TokenExpires.UTC().Format(time.RFC3339)
		}
		switch annotation {
		case v1alpha1.AnnotationRenew:
			p.Step(progress.Controller, r.Name, "token replaced by the controller, valid until %s; sidecar not restarted", expires)
		default:
			p.Step(progress.Controller, r.Name, "%s by the controller: fresh token (valid until %s) and files delivered; Ready: %s", verb, expires, r.Message)
		}
	}
	return nil
}

// revokeFleet pauses each VM's MeshVM (or the controller would issue it a
// token again) and revokes its token.
func revokeFleet(ctx context.Context, f *fleet.Fleet, vms []config.VM, p progress.Reporter) error {
	dc, err := fleetmode.Dynamic(f)
	if err != nil {
		return err
	}
	var errs []error
	for _, vm := range vms {
		paused, err := fleetmode.Pause(ctx, dc, f.Config.Workload.Namespace, vm.Name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", vm.Name, err))
			continue
		}
		if paused {
			p.Say("%s: MeshVM paused: the controller leaves it alone until hostctl vm onboard %s", vm.Name, vm.Name)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return f.Revoke(ctx, vms, p)
}

// removeFleet is vm rm in fleet mode: the MeshVM deleted and its finalizer
// awaited (the controller revokes the token, deletes the WorkloadEntry and
// undoes the agent's changes), then the machine.
func removeFleet(ctx context.Context, f *fleet.Fleet, name string, p progress.Reporter) error {
	dc, err := fleetmode.Dynamic(f)
	if err != nil {
		return err
	}
	if err := fleetmode.Delete(ctx, dc, f.Config.Workload.Namespace, []string{name}, p.Say); err != nil {
		return err
	}
	return f.RemoveMachine(ctx, name, p)
}

// downFleet deletes every MeshVM meshvm created and awaits their
// finalizers while the controller still runs, before down removes the
// machines and the cluster. A cluster that does not answer is said and
// passed over: the machines go anyway.
func downFleet(ctx context.Context, f *fleet.Fleet, p progress.Reporter) error {
	dc, err := fleetmode.Dynamic(f)
	if err != nil {
		p.Say("MeshVMs not deleted first (%v)", err)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	names, err := fleetmode.Ours(ctx, dc, f.Config.Workload.Namespace)
	if err != nil {
		p.Say("MeshVMs not deleted first (%v)", err)
		return nil
	}
	return fleetmode.Delete(ctx, dc, f.Config.Workload.Namespace, names, p.Say)
}

// notDeclared refuses a command that would drive VMs from this workstation
// (fleet mode off) while their MeshVMs are in the cluster: the controller
// keeps those, and two writers of one VM's token and files would undo each
// other. A cluster without the MeshVM CRD has none.
func notDeclared(ctx context.Context, f *fleet.Fleet, vms []config.VM) error {
	dc, err := fleetmode.Dynamic(f)
	if err != nil {
		return nil // the command itself will say the cluster does not answer
	}
	ours, err := fleetmode.Ours(ctx, dc, f.Config.Workload.Namespace)
	if err != nil {
		return nil
	}
	var declared []string
	for _, vm := range vms {
		if slices.Contains(ours, vm.Name) {
			declared = append(declared, vm.Name)
		}
	}
	if len(declared) == 0 {
		return nil
	}
	return usageErrorf("%s: declared as MeshVMs, kept by the controller (fleet adopt or a fleet-mode up): set fleet.enabled: true (or MESHVM_FLEET=true) so that hostctl acts through them",
		strings.Join(declared, ", "))
}

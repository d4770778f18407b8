package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/reason"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Revoke deletes the Secret each VM's token is bound to: the API server
// refuses the token from then on.
func (f *Fleet) Revoke(ctx context.Context, vms []config.VM, p Reporter) error {
	cfg, s := f.Config, f.Site
	clients, err := KubeClients(s.Kubeconfig())
	if err != nil {
		return err
	}
	deps := vmcore.Deps{Kube: clients, Workload: WorkloadSpec(cfg)}
	var errs []error
	for _, vm := range vms {
		revoked, err := vmcore.Revoke(ctx, vm.Name, deps)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", vm.Name, err))
		case !revoked:
			p.Say("%s: no Secret %s/%s: already revoked, or never onboarded", vm.Name, cfg.Workload.Namespace, workload.CredentialName(vm.Name))
		default:
			p.Report(progress.Event{Cause: reason.Because(reason.TokenRevoked, vm.Name),
				Message: fmt.Sprintf("%s: Secret %s/%s deleted: its token is refused from now on; the VM leaves the mesh when its certificate expires",
					vm.Name, cfg.Workload.Namespace, workload.CredentialName(vm.Name))})
		}
	}
	return errors.Join(errs...)
}

// Onboard re-onboards running VMs without reinstalling anything: fresh
// token and files, the sidecar (re)started when it needs it (or restart),
// each VM Healthy again.
func (f *Fleet) Onboard(ctx context.Context, p Reporter, vms []config.VM, restart bool) error {
	r, err := attach(ctx, p, f)
	if err != nil {
		return err
	}
	return eachVM(f.Config.Parallel, vms, func(vm config.VM) error {
		_, err := r.converge(ctx, r.onboardSpec(vm, true, restart), drive{tellAgent: true})
		return err
	})
}

// Add converges the site and the one VM name, as up does for each.
func (f *Fleet) Add(ctx context.Context, p Reporter, name string) error {
	r, err := start(ctx, p, f)
	if err != nil {
		return err
	}
	if err := r.up(ctx, name); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// Remove deletes VM name, its WorkloadEntry, its token and its state, then
// runs unlist (the config file is the caller's).
func (f *Fleet) Remove(ctx context.Context, name string, p Reporter, unlist func() error) error {
	cfg, state, s := f.Config, f.State, f.Site
	rm := &vmRemoval{cfg: cfg, state: state, machines: s.Machines(), kubeconfig: s.Kubeconfig(), ctx: ctx, name: name, p: p}
	var errs []error
	m, err := s.Machines().Info(ctx, name)
	switch {
	case errors.Is(err, machine.ErrNotFound):
		p.Say("no machine %s", name)
	case err != nil:
		return err
	default:
		if err := rm.machine(); err != nil {
			return err
		}
		errs = append(errs, rm.entry(m))
	}
	// The token goes with the VM even when the machine is already gone.
	errs = append(errs, rm.token(), os.RemoveAll(state.Path("vms", name)), unlist())
	return errors.Join(errs...)
}

// vmRemoval is Remove of one VM, step by step: the machine, its
// WorkloadEntry, its token, its files.
type vmRemoval struct {
	cfg        config.Config
	state      *statedir.Dir
	machines   machine.Provider
	kubeconfig string
	ctx        context.Context
	name       string
	p          Reporter

	clients    workload.Clients
	clientsErr error
	dialed     bool
}

// kube returns the cluster's clients, made once.
func (rm *vmRemoval) kube() (workload.Clients, error) {
	if !rm.dialed {
		rm.clients, rm.clientsErr = KubeClients(rm.kubeconfig)
		rm.dialed = true
	}
	return rm.clients, rm.clientsErr
}

func (rm *vmRemoval) machine() error {
	how, err := removeVM(rm.ctx, rm.cfg, rm.state, rm.machines, rm.name)
	if err != nil {
		return err
	}
	rm.p.Say("machine %s %s", rm.name, how)
	return nil
}

// core is what the per-VM core's deletion steps work through.
func (rm *vmRemoval) core() (vmcore.DirStore, vmcore.Deps, error) {
	clients, err := rm.kube()
	return vmcore.DirStore{Dir: rm.state}, vmcore.Deps{Kube: clients, Workload: WorkloadSpec(rm.cfg)}, err
}

// entry deletes the VM's WorkloadEntry.
func (rm *vmRemoval) entry(m machine.Machine) error {
	store, deps, err := rm.core()
	if err != nil {
		return err
	}
	addr, gone, err := vmcore.DeleteEntry(rm.ctx, rm.name, m, store, deps)
	switch {
	case err != nil:
		return reason.Wrap(err, reason.ClusterUnreachable)
	case addr == "":
		rm.p.Say("%s has no address and was never onboarded: no WorkloadEntry to delete", rm.name)
	case gone != "":
		rm.p.Say("WorkloadEntry %s deleted", gone)
	}
	return nil
}

// token revokes the VM's token. Without a cluster it says so and goes on,
// as before: the machine and its files go anyway.
func (rm *vmRemoval) token() error {
	_, deps, err := rm.core()
	if err != nil {
		rm.p.Report(progress.Event{Message: fmt.Sprintf("token of %s not revoked (%v)", rm.name, err), Cause: reason.Because(reason.TokenNotRevoked, rm.name)})
		return nil
	}
	revoked, err := vmcore.Revoke(rm.ctx, rm.name, deps)
	if err != nil {
		return err
	}
	if revoked {
		rm.p.Say("token revoked (Secret %s/%s deleted)", rm.cfg.Workload.Namespace, workload.CredentialName(rm.name))
	}
	return nil
}

// Stop powers the VMs off, keeping their disks, where the machines are
// hostctl's to power off.
func (f *Fleet) Stop(ctx context.Context, vms []config.VM, p Reporter) error {
	cfg, s := f.Config, f.Site
	stopper, ok := s.Machines().(machine.Stopper)
	if !ok {
		return fmt.Errorf("%s machines are not hostctl's to power off: stop them yourself (the agent and sidecar come back on boot)", cfg.MachineProvider())
	}
	return eachVM(f.Config.Parallel, vms, func(vm config.VM) error {
		if err := stopper.Stop(ctx, vm.Name); err != nil {
			return err
		}
		p.Say("%s stopped", vm.Name)
		return nil
	})
}

// Start powers the VMs on (only a workstation may: the core never does)
// and drives the core until each is Healthy again on its own, up to
// timeout: the machine's boot starts the agent and sidecar, and nothing is
// sent.
func (f *Fleet) Start(ctx context.Context, p Reporter, vms []config.VM, timeout time.Duration) error {
	r, err := observe(p, f)
	if err != nil {
		return err
	}
	return eachVM(f.Config.Parallel, vms, func(vm config.VM) error {
		return r.start(ctx, vm, timeout)
	})
}

func (r *session) start(ctx context.Context, vm config.VM, timeout time.Duration) error {
	machines := r.machines
	m, err := machines.Info(ctx, vm.Name)
	if err != nil {
		return reason.Wrap(err, reason.VMNotFound, vm.Name)
	}
	if !m.Running() {
		// Booting: the entry must come from the new boot's proxy.
		if err := vmcore.Booting(ctx, vm.Name, entryAddress(r.state, m), r.store, r.coreDeps(nil)); err != nil {
			return err
		}
	}
	m, err = machines.Launch(ctx, machine.Spec{Name: vm.Name})
	if err != nil {
		return err
	}
	r.p.Step(progress.Machine, vm.Name, "%s at %s", m.State.Lower(), m.Address())
	spec := r.onboardSpec(vm, false, false)
	spec.KeepFiles = true
	_, err = r.converge(ctx, spec, drive{agentLine: "answering", patience: timeout, then: reason.NotBackOnline})
	return err
}

// Logs prints the sidecar's log lines from VM name's agent to out.
func (f *Fleet) Logs(ctx context.Context, out io.Writer, name string, req *agentv1.SidecarLogsRequest) error {
	store, err := f.records()
	if err != nil {
		return err
	}
	return printLogs(ctx, out, store, f.Site.Machines(), name, req)
}

func printLogs(ctx context.Context, out io.Writer, store vmcore.Store, machines machine.Provider, name string, req *agentv1.SidecarLogsRequest) error {
	m, err := machines.Info(ctx, name)
	if err != nil {
		return reason.Wrap(err, reason.VMGone)
	}
	ac, err := vmcore.DialAgent(m, store)
	switch {
	case errors.Is(err, vmcore.ErrNotRunning):
		return reason.Wrap(fmt.Errorf("VM %s is %s", m.Name, m.State.Lower()), reason.VMNotRunning, m.Name)
	case err != nil:
		return err
	}
	defer ac.Close()
	err = ac.SidecarLogs(ctx, req, func(lines []*agentv1.LogLine) error {
		for _, l := range lines {
			if _, err := fmt.Fprintln(out, l.GetText()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", m.Name, err)
	}
	return nil
}

// Renew rotates the istio-token of each running VM whose token is past
// half its life (every one with force) through the core: only that file
// is sent, and nothing restarts.
func (f *Fleet) Renew(ctx context.Context, vms []config.VM, force bool, p Reporter) error {
	r, err := observe(nil, f)
	if err != nil {
		return err
	}
	return eachVM(f.Config.Parallel, vms, func(vm config.VM) error {
		return r.renew(ctx, vm, force, p)
	})
}

func (r *session) renew(ctx context.Context, vm config.VM, force bool, p Reporter) error {
	deps := r.coreDeps(func(e vmcore.Event) {
		if e.Reason == vmcore.TokenCapped {
			p.Say("%s: %s", vm.Name, e.Message)
		}
	})
	rn, err := vmcore.RenewToken(ctx, vm.Name, r.cfg.Workload.TokenLifetime.Duration, force, r.store, deps)
	switch {
	case errors.Is(err, vmcore.ErrNotRunning):
		return reason.Wrap(fmt.Errorf("VM %s is %s", vm.Name, rn.MachineState), reason.VMStoppedRenew, vm.Name)
	case err != nil:
		return err
	case rn.Kept:
		p.Say("%s: token kept (more than half its life left)", vm.Name)
	default:
		p.Say("%s: new token valid until %s sent; sidecar not restarted", vm.Name, rn.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return nil
}

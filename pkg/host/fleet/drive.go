package fleet

import (
	"context"
	"fmt"
	"time"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/reason"
)

// How long the driver waits on the world, as hostctl always has: an agent
// that does not answer, and a VM that does not come back registered or
// Healthy after its files are delivered.
const (
	agentPatience = 30 * time.Second
	entryPatience = 2 * time.Minute
)

// onboardSpec is the core's declaration of config VM vm for one run.
func (r *session) onboardSpec(vm config.VM, fresh, restart bool) vmcore.Spec {
	return vmcore.Spec{Name: vm.Name, Generation: 1, RunsApp: r.cfg.RunsApp(vm), Proxyless: r.cfg.Proxyless(vm), ProbePort: r.spec.ProbePort, AppPort: r.cfg.Workload.Port,
		TokenLifetime: r.cfg.Workload.TokenLifetime.Duration, FreshToken: fresh, Restart: restart}
}

// provisionSpec is onboardSpec for up and vm add: the machine created (or
// found running), the app converged, the agent installed or updated.
func (r *session) provisionSpec(vm config.VM) vmcore.Spec {
	spec := r.onboardSpec(vm, false, false)
	spec.Provision = true
	spec.Machine = machine.Spec{Name: vm.Name, Image: vm.Image, CPUs: vm.CPUs, Memory: vm.Memory, Disk: vm.Disk}
	return spec
}

// drive is how a command drives the core.
type drive struct {
	// tellAgent says whether a line tells the agent answering (vm upgrade
	// has never said it).
	tellAgent bool
	// agentLine, when set, is the agent line's detail (vm start's "answering").
	agentLine string
	// patience is how long the entry is awaited once the files are out
	// (entryPatience when 0).
	patience time.Duration
	// then is the reason of a VM that did not come through in time, for
	// the next step to be named after its own.
	then reason.Reason
}

func (d drive) entryPatience() time.Duration {
	if d.patience > 0 {
		return d.patience
	}
	return entryPatience
}

// coreDeps are the clients the core's passes work through, its events told
// to record.
func (r *session) coreDeps(record func(vmcore.Event)) vmcore.Deps {
	return vmcore.Deps{Machines: r.machines, Kube: r.clients, Workload: r.spec,
		AgentBinary: r.agentBinary, Apps: apps{r.machines}, Record: record}
}

// converge runs the core's passes over one VM until it is onboarded, waiting
// between them as each asks (or until its WorkloadEntry changes), and
// reports each event as a progress line. It gives up as hostctl always has,
// with the advice its reasons call for.
func (r *session) converge(ctx context.Context, spec vmcore.Spec, d drive) (vmcore.Status, error) {
	deps := r.coreDeps(func(e vmcore.Event) {
		switch {
		case e.Reason != vmcore.AgentAnswering:
			r.progress(ctx, spec, e)
		case d.agentLine != "":
			r.p.Step(progress.Agent, spec.Name, "%s", d.agentLine)
		case d.tellAgent:
			r.progress(ctx, spec, e)
		}
	})
	var st vmcore.Status
	var synced time.Time
	// Once the files are out, what is awaited is istiod writing the VM's
	// WorkloadEntry: a watch wakes the next pass when it changes.
	var changes <-chan struct{}
	watching, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	for {
		res, err := vmcore.Reconcile(ctx, spec, st, r.targets.Snapshot(ctx), r.store, deps)
		st = res.Status
		if err != nil || res.Done || spec.AgentOnly && st.Conditions.IsTrue(vmcore.AgentReachable) {
			return st, err
		}
		if synced.IsZero() && st.Conditions.IsTrue(vmcore.FilesInSync) {
			synced = time.Now()
			changes = workload.EntryChanges(watching, r.clients, r.spec)
		}
		if err := giveUp(spec, res, synced, d); err != nil {
			return st, err
		}
		// Look again as the core asks, and when the patience runs out at the latest.
		wait := res.RequeueAfter
		if !synced.IsZero() {
			wait = max(min(wait, d.entryPatience()-time.Since(synced)), 0)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-changes:
		case <-time.After(wait):
		}
	}
}

// progress prints one of the core's events as the step line it has always been.
func (r *session) progress(ctx context.Context, spec vmcore.Spec, e vmcore.Event) {
	name := spec.Name
	switch e.Reason {
	case vmcore.MachineRunning:
		r.p.Step(progress.Machine, name, "%s", e.Message)
	case vmcore.AppServing:
		r.p.Step(progress.App, name, "%s", e.Message)
	case vmcore.AppOwn, vmcore.AppOwnRemoved:
		detail := fmt.Sprintf("off (app: false): your app serves port %d", spec.AppPort)
		if e.Reason == vmcore.AppOwnRemoved {
			detail += "; hostctl's " + appUnitName + " removed"
		}
		r.p.Step(progress.App, name, "%s", detail)
	case vmcore.AgentAnswering:
		if spec.Provision {
			// up installed it: which vmagent answers.
			r.p.Step(progress.Agent, name, "vmagent %s %s", e.Object, e.Message)
		} else {
			r.p.Step(progress.Agent, name, "%s", e.Message)
		}
	case vmcore.RevisionKept:
		want := revisionName(r.mesh.Revision(ctx))
		r.p.Report(progress.Event{Step: progress.Onboard, VM: name, Message: e.Message, Cause: reason.Because(reason.RevisionKept, name, want)})
	case vmcore.Joining, vmcore.TokenCapped, vmcore.Delivered:
		r.p.Step(progress.Onboard, name, "%s", e.Message)
	case vmcore.WaitsOnOwnApp:
		r.p.Step(progress.Healthy, name, "WorkloadEntry %s registered, sidecar connected; Healthy waits on your app answering on port %d (app: false)",
			e.Object, r.cfg.Workload.Probe.Port)
	case vmcore.EntryHealthy, vmcore.StaleEntryDeleted, vmcore.WaitsOnGRPCApp:
		r.p.Step(progress.Healthy, name, "%s", e.Message)
	}
}

// giveUp is the error that ends the run for a pass that did not finish the
// VM, naming the next step; nil while waiting is still worth it. synced is
// when the files were delivered (zero before).
func giveUp(spec vmcore.Spec, res vmcore.Result, synced time.Time, d drive) error {
	name, cs := spec.Name, res.Status.Conditions
	if c, _ := cs.Get(vmcore.Machine); c.Status == vmcore.False {
		switch c.Reason {
		case vmcore.MachineNotFound:
			return reason.Wrap(fmt.Errorf("no VM %s", name), reason.VMNotFound, name)
		case vmcore.MachineNotRunning:
			return reason.Wrap(fmt.Errorf("VM %s is %s", name, res.Status.MachineState), reason.VMNotRunning, name)
		default:
			return res.Cause
		}
	}
	if c, _ := cs.Get(vmcore.AgentReachable); c.Status == vmcore.False && time.Since(c.LastTransitionTime) >= agentPatience {
		return reason.Wrap(fmt.Errorf("%s: agent not answering after 30s: %w", name, res.Cause), reason.AgentNotAnswering)
	}
	if synced.IsZero() || time.Since(synced) < d.entryPatience() {
		return nil
	}
	err := notOnboarded(spec, res.Status, d.entryPatience())
	if d.then != "" {
		return reason.Wrap(err, d.then, name)
	}
	return err
}

// notOnboarded says why the VM's WorkloadEntry did not come through in time,
// from the reasons of its last pass.
func notOnboarded(spec vmcore.Spec, st vmcore.Status, timeout time.Duration) error {
	e := st.Entry
	registered, _ := st.Conditions.Get(vmcore.Registered)
	healthy, _ := st.Conditions.Get(vmcore.Healthy)
	switch {
	case registered.Reason == vmcore.NoEntry:
		return reason.Wrap(fmt.Errorf("no WorkloadEntry for %s after %s: the sidecar has not reached istiod", st.Address, timeout), reason.EntryTimedOut)
	case !spec.RunsApp:
		return reason.Wrap(fmt.Errorf("WorkloadEntry %s: the sidecar has not (re)connected to istiod after %s", e.Name, timeout), reason.EntryTimedOut)
	case healthy.Reason == vmcore.NotReconnected:
		return reason.Wrap(fmt.Errorf("WorkloadEntry %s: the restarted sidecar has not reconnected and reported health after %s", e.Name, timeout), reason.EntryTimedOut)
	default:
		return fmt.Errorf("WorkloadEntry %s not Healthy after %s (%s): is the app listening on port %d?", e.Name, timeout, orNone(e.Message), spec.ProbePort)
	}
}

func orNone(s string) string {
	if s == "" {
		return "no health report yet"
	}
	return s
}

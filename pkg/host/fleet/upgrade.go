package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/reason"
)

// OnboardSteps are the steps Onboard and Upgrade report; StartSteps Start's.
var (
	OnboardSteps = []progress.Step{progress.ControlPlane, progress.Workload, progress.Agent, progress.Onboard, progress.Healthy}
	StartSteps   = []progress.Step{progress.Machine, progress.Agent, progress.Healthy}
	// In fleet mode the controller moves and judges the VMs.
	FleetUpgradeSteps = []progress.Step{progress.ControlPlane, progress.Workload, progress.Controller}
	FleetStartSteps   = []progress.Step{progress.Machine, progress.Agent, progress.Controller}
)

// Upgrade moves the VMs onto revision rev ("" is the default), parallel at a
// time, stopping at the first that does not come back; it says how many
// moved. While VMs are split between revisions the WorkloadGroup carries no
// istio.io/rev, so both revisions' istiods serve it.
func (f *Fleet) Upgrade(ctx context.Context, p Reporter, vms []config.VM, rev string, parallel int) (int, error) {
	cfg, state, s := f.Config, f.State, f.Site
	detail, err := s.IstiodReady(ctx, rev)
	if err != nil {
		return 0, reason.Wrap(fmt.Errorf("istiod of revision %s is not ready (%w)", revisionName(rev), err), reason.RevisionNotReady, revisionName(rev))
	}
	p.Step(progress.ControlPlane, "", "target: istiod %s", detail)
	r, err := attach(ctx, p, f)
	if err != nil {
		return 0, err
	}
	siteRev := s.Revision(ctx)
	var moving []config.VM
	for _, vm := range vms {
		if !sameRevision(vmRevision(vmcore.DirStore{Dir: state}, vm.Name, siteRev), rev) {
			moving = append(moving, vm)
		}
	}
	if len(moving) > 0 {
		// Both revisions' istiods must see the group while VMs are split.
		if err := r.labelGroup(ctx, ""); err != nil {
			return 0, err
		}
	}
	moved := 0
	for start := 0; start < len(vms); start += parallel {
		batch := vms[start:min(start+parallel, len(vms))]
		err := eachVM(cfg.Parallel, batch, func(vm config.VM) error { return r.upgrade(ctx, s, vm.Name, rev, siteRev) })
		if err != nil {
			return moved, errors.Join(err, r.labelGroup(ctx, groupRevision(cfg, vmcore.DirStore{Dir: state}, siteRev)))
		}
		moved += len(batch)
	}
	return moved, r.labelGroup(ctx, groupRevision(cfg, vmcore.DirStore{Dir: state}, siteRev))
}

// upgrade moves one VM onto rev and checks that an istiod of rev registered
// it (as mesh tells). A VM already there is converged without a restart.
func (r *session) upgrade(ctx context.Context, mesh MeshStatus, name, rev, siteRev string) error {
	from := vmRevision(vmcore.DirStore{Dir: r.state}, name, siteRev)
	vm, err := r.cfg.VM(name)
	if err != nil {
		return err
	}
	start := time.Now()
	move := !sameRevision(from, rev)
	spec := r.onboardSpec(vm, false, move)
	spec.Revision, spec.Pinned = rev, true
	st, err := r.converge(ctx, spec, drive{})
	e := st.Entry
	rollback := func(err error) error { return reason.Wrap(err, reason.NotBackOnRevision, name, revisionName(from)) }
	if err != nil {
		if !move {
			return err
		}
		return rollback(fmt.Errorf("did not come back on revision %s (%w)", revisionName(rev), err))
	}
	if got := mesh.RevisionOf(ctx, e.Controller); got != "" && !sameRevision(got, rev) {
		return rollback(fmt.Errorf("WorkloadEntry %s is held by istiod %s of revision %s, not %s", e.Name, e.Controller, got, revisionName(rev)))
	}
	how := "already on it"
	if move {
		how = "moved from " + revisionName(from)
	}
	r.p.Step(progress.Healthy, name, "revision %s (%s in %s), registered by istiod %s", revisionName(rev), how, time.Since(start).Round(100*time.Millisecond), orDash(e.Controller))
	return nil
}

// labelGroup sets the WorkloadGroup's istio.io/rev ("" removes it).
func (r *session) labelGroup(ctx context.Context, rev string) error {
	if r.spec.Revision == rev {
		return nil
	}
	r.spec.Revision = rev
	changes, err := workload.Ensure(ctx, r.clients, r.spec)
	for _, ch := range changes {
		if ch.Action != ownership.Unchanged {
			what := "istio.io/rev " + rev
			if rev == "" {
				what = "no istio.io/rev: every revision's istiod serves it"
			}
			r.p.Step(progress.Workload, "", "%s %s (%s)", ch.Object, ch.Action, what)
		}
	}
	return err
}

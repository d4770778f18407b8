package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

type vmUpgradeCmd struct {
	vmCmd
	revision string
	parallel int
}

func (c *vmUpgradeCmd) command() *cobra.Command {
	cmd := c.flags(&cobra.Command{
		Use:               "upgrade [VM...] --revision REV",
		ValidArgsFunction: c.g.completeVMs(0),
		Short:             "Move running VMs to another Istio revision, one at a time (or --parallel N), stopping at the first that does not come back",
		Long: "upgrade moves each VM (all when none is named) onto the revision's istiod: files pointing at\n" +
			"istiod-REV, the proxy of the version that istiod reports, a sidecar restart, and a wait until the\n" +
			"VM's WorkloadEntry is Healthy again, registered by an istiod of REV. Then the next VM. It stops at the\n" +
			"first VM that does not come back and names the command that moves it back. While VMs are split\n" +
			"between revisions the WorkloadGroup carries no istio.io/rev, so both revisions' istiods serve it.\n" +
			"The revision's control plane must run first (istio.revision: REV and hostctl up installs meshvm's).",
		RunE: c.run,
	}, 30*time.Minute)
	cmd.Flags().StringVar(&c.revision, "revision", "", "the Istio revision to move the VMs to (default: the default revision)")
	cmd.Flags().IntVar(&c.parallel, "parallel", 1, "VMs moved at once")
	cmd.MarkFlagRequired("revision")
	return cmd
}

func (c *vmUpgradeCmd) run(cmd *cobra.Command, args []string) error {
	rev := c.revision
	if !workloadfiles.Revisioned(rev) {
		rev = ""
	}
	if rev != "" && !config.ValidRevision(rev) {
		return usageError{fmt.Errorf("--revision %q: a revision is a DNS label (lowercase letters, digits and '-'), e.g. canary or 1-31-0", c.revision)}
	}
	if c.parallel < 1 {
		return usageError{fmt.Errorf("--parallel %d: move at least one VM at a time", c.parallel)}
	}
	v, cancel, err := c.beginAll(cmd, args)
	if err != nil {
		return err
	}
	defer cancel()
	ctx, w := v.ctx, cmd.ErrOrStderr()
	p := newProgress(w, "control plane", "workload", "agent", "onboard", "healthy")
	detail, err := v.site.istiodReady(ctx, rev)
	if err != nil {
		return fmt.Errorf("istiod of revision %s is not ready (%w): install that revision first (for meshvm's Istio: istio.revision: %s, then hostctl up)",
			revisionName(rev), err, revisionName(rev))
	}
	p.step("control plane", "", "target: istiod %s", detail)
	r, err := attach(ctx, p, v.cfg, v.state, v.site)
	if err != nil {
		return err
	}
	siteRev := v.site.revision(ctx)
	var moving []config.VM
	for _, vm := range v.vms {
		if !sameRevision(vmRevision(v.state, vm.Name, siteRev), rev) {
			moving = append(moving, vm)
		}
	}
	if len(moving) > 0 {
		// Both revisions' istiods must see the group while VMs are split.
		if err := r.labelGroup(ctx, ""); err != nil {
			return err
		}
	}
	moved := 0
	for start := 0; start < len(v.vms); start += c.parallel {
		batch := v.vms[start:min(start+c.parallel, len(v.vms))]
		err := eachVM(batch, func(vm config.VM) error { return r.upgrade(ctx, vm.Name, rev, siteRev) })
		if err != nil {
			return errors.Join(err, r.labelGroup(ctx, groupRevision(v.cfg, v.state, siteRev)))
		}
		moved += len(batch)
	}
	if err := r.labelGroup(ctx, groupRevision(v.cfg, v.state, siteRev)); err != nil {
		return err
	}
	fmt.Fprintf(w, "vm upgrade: %d VM(s) on revision %s in %s\n", moved, revisionName(rev), time.Since(p.start).Round(time.Second))
	if !sameRevision(v.cfg.Istio.Revision, rev) {
		fmt.Fprintf(w, "vm upgrade: istio.revision is %s: set it to %s so that VMs added later join it too\n", revisionName(v.cfg.Istio.Revision), revisionName(rev))
	}
	return nil
}

// upgrade moves one VM onto rev and checks that an istiod of rev registered
// it. A VM already there is converged without a restart.
func (r *session) upgrade(ctx context.Context, name, rev, siteRev string) error {
	from := vmRevision(r.state, name, siteRev)
	m, ac, err := r.running(ctx, name)
	if err != nil {
		return err
	}
	defer ac.Close()
	start := time.Now()
	move := !sameRevision(from, rev)
	e, err := r.onboardOnto(ctx, name, m, ac, false, move, rev)
	rollback := fmt.Sprintf("roll it back with hostctl vm upgrade %s --revision %s", name, revisionName(from))
	if err != nil {
		if !move {
			return err
		}
		return fmt.Errorf("did not come back on revision %s (%w): %s", revisionName(rev), err, rollback)
	}
	if got := r.site.revisionOf(ctx, e.Controller); got != "" && !sameRevision(got, rev) {
		return fmt.Errorf("WorkloadEntry %s is held by istiod %s of revision %s, not %s: %s", e.Name, e.Controller, got, revisionName(rev), rollback)
	}
	how := "already on it"
	if move {
		how = "moved from " + revisionName(from)
	}
	r.p.step("healthy", name, "revision %s (%s in %s), registered by istiod %s", revisionName(rev), how, time.Since(start).Round(100*time.Millisecond), orDash(e.Controller))
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
		if ch.Action != "unchanged" {
			what := "istio.io/rev " + rev
			if rev == "" {
				what = "no istio.io/rev: every revision's istiod serves it"
			}
			r.p.step("workload", "", "%s %s (%s)", ch.Object, ch.Action, what)
		}
	}
	return err
}

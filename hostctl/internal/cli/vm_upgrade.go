package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/fleetmode"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// upgradePatience is how long fleet mode's vm upgrade waits for the
// controller to report a batch of VMs Ready on the new revision.
const upgradePatience = 5 * time.Minute

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
			"The revision's control plane must run first (istio.revision: REV and hostctl up installs meshvm's).\n" +
			"In fleet mode it sets each VM's MeshVM spec.revision and waits until the controller reports it Ready\n" +
			"and UpToDate on REV (from any workstation with the kubeconfig and the config).",
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
	return c.onAllVMs(cmd, args, func(v *vmRun) error {
		w := cmd.ErrOrStderr()
		steps := fleet.OnboardSteps
		if v.Config.FleetMode() {
			steps = fleet.FleetUpgradeSteps
		}
		p := newProgress(w, steps...)
		upgrade := func() (int, error) { return v.Upgrade(v.ctx, p.Reporter(), v.vms, rev, c.parallel) }
		if v.Config.FleetMode() {
			// The controller keeps each VM on its MeshVM's spec.revision:
			// the move is a change of it, which the controller converges.
			upgrade = func() (int, error) {
				return fleetmode.Upgrade(v.ctx, v.Fleet, p.Reporter(), names(v.vms), rev, c.parallel, upgradePatience)
			}
		}
		moved, err := upgrade()
		if err != nil {
			return err
		}
		from, to := workloadfiles.RevisionName(v.Config.Istio.Revision), workloadfiles.RevisionName(rev)
		fmt.Fprintf(w, "vm upgrade: %d VM(s) on revision %s in %s\n", moved, to, time.Since(p.start).Round(time.Second))
		if from != to {
			fmt.Fprintf(w, "vm upgrade: istio.revision is %s: set it to %s so that VMs added later join it too\n", from, to)
		}
		return nil
	})
}

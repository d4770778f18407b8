package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/fleetmode"
)

type doctorCmd struct {
	vmCmd
	output string
}

func (c *doctorCmd) command() *cobra.Command {
	cmd := c.flags(&cobra.Command{
		Use:   "doctor",
		Short: "Name the known failure modes before they bite, each with its fix",
		Long: "doctor checks the cluster (API, istiod, host ports the east-west gateway needs) and every VM\n" +
			"(address, agent, hosts file and istiod DNS, token and certificate, iptables backend, proxy build\n" +
			"against istiod's). In fleet mode the agent CA and the VMs' records are the cluster's, so any\n" +
			"workstation with the kubeconfig and the config can run it. It changes nothing; it exits non-zero\n" +
			"when a check fails.",
		Args: cobra.NoArgs,
		RunE: c.run,
	}, time.Minute)
	return outputFlag(cmd, &c.output, "table", "json", "yaml")
}

func (c *doctorCmd) run(cmd *cobra.Command, _ []string) error {
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	var store []fleet.Finding
	if f.Config.FleetMode() {
		// The VMs' records and the agent CA are the cluster's: without
		// them each VM's checks say they were not reached.
		if err := fleetmode.UseCluster(ctx, f); err != nil {
			store = append(store, fleet.Finding{Scope: "cluster", Check: "fleet store", Result: fleet.Fail, Detail: err.Error()})
		} else {
			store = append(store, fleet.Finding{Scope: "cluster", Check: "fleet store", Result: fleet.OK,
				Detail: "the agent CA and the VMs' records are read from the cluster (fleet mode)"})
		}
	}
	out := append(store, f.Doctor(ctx)...)
	for i := range out {
		out[i].Fix = advise(out[i].Fix, out[i].Cause)
	}
	if err := renderFindings(cmd.OutOrStdout(), c.output, out); err != nil {
		return err
	}
	failed := 0
	for _, f := range out {
		if f.Result == fleet.Fail {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed: see FIX", failed)
	}
	return nil
}

func renderFindings(w io.Writer, output string, out []fleet.Finding) error {
	return render(w, output, out, []string{"SCOPE", "CHECK", "RESULT", "DETAIL", "FIX"},
		func(f fleet.Finding) []string {
			return []string{f.Scope, f.Check, string(f.Result), f.Detail, orDash(f.Fix)}
		})
}

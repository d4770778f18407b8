package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/fleetmode"
	"github.com/meshvm/meshvm/pkg/reason"
)

type verifyCmd struct {
	g      *globals
	output string
	opts   fleet.VerifyOptions
}

func (c *verifyCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Run the recipe's closing checks: istiod resolves on the VM, and traffic both ways",
		Args:  cobra.NoArgs,
		RunE:  c.run,
	}
	cmd.Flags().StringVar(&c.opts.GRPCService, "grpc-service", "",
		"NAME.NAMESPACE:PORT: the mesh gRPC service proxyless VMs call by its mesh name (xds:///), where the site can run a gRPC client on them (the lab)")
	return outputFlag(cmd, &c.output, "table", "json", "yaml")
}

func (c *verifyCmd) run(cmd *cobra.Command, _ []string) error {
	f, err := c.g.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Minute)
	defer cancel()
	if f.Config.FleetMode() {
		// The agents pin the cluster's CA: reach them through its records.
		if err := fleetmode.UseCluster(ctx, f); err != nil {
			return err
		}
	}
	out := f.Verify(ctx, c.opts)
	rows := make([]verdictRow, len(out))
	failed := 0
	for i, v := range out {
		rows[i] = verdictRow{VM: v.VM, Check: v.Check, Result: verifyWord(v.Result), Detail: advise(v.Detail, v.Cause), Reason: v.Reason}
		if v.Result == fleet.Fail {
			failed++
		}
	}
	if err := render(cmd.OutOrStdout(), c.output, rows, []string{"VM", "CHECK", "RESULT", "DETAIL"},
		func(v verdictRow) []string { return []string{v.VM, v.Check, v.Result, v.Detail} }); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed", failed)
	}
	return nil
}

// verdictRow is one line of verify's report, as it has always printed:
// a failure shouts.
type verdictRow struct {
	VM     string `json:"vm"`
	Check  string `json:"check"`
	Result string `json:"result"`
	Detail string `json:"detail,omitempty"`
	// Reason is the failure's cause, for scripts.
	Reason reason.Reason `json:"reason,omitempty"`
}

func verifyWord(r fleet.Result) string {
	if r == fleet.Fail {
		return "FAIL"
	}
	return string(r)
}

package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/fleet"
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
	out := f.Verify(ctx, c.opts)
	if err := render(cmd.OutOrStdout(), c.output, out, []string{"VM", "CHECK", "RESULT", "DETAIL"},
		func(v fleet.Verdict) []string { return []string{v.VM, v.Check, v.Result, v.Detail} }); err != nil {
		return err
	}
	failed := 0
	for _, v := range out {
		if v.Result == "FAIL" {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed", failed)
	}
	return nil
}

package cli

import (
	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/report"
)

type configShowCmd struct {
	g      *globals
	output string
}

func (c *configShowCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Print every field of the merged configuration (defaults, file, MESHVM_* variables)",
		Args:  cobra.NoArgs,
		RunE:  c.run,
	}
	return outputFlag(cmd, &c.output, "yaml", "json")
}

func (c *configShowCmd) run(cmd *cobra.Command, _ []string) error {
	cfg, err := c.g.load(cmd)
	if err != nil {
		return err
	}
	_, err = report.Encode(cmd.OutOrStdout(), c.output, cfg)
	return err
}

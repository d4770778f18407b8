package cli

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
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
	cmd.Flags().StringVarP(&c.output, "output", "o", "yaml", "output format: yaml|json")
	return cmd
}

func (c *configShowCmd) run(cmd *cobra.Command, _ []string) error {
	cfg, err := c.g.load(cmd)
	if err != nil {
		return err
	}
	switch c.output {
	case "yaml":
		out, err := cfg.Marshal()
		if err != nil {
			return err
		}
		_, err = cmd.OutOrStdout().Write(out)
		return err
	case "json":
		enc := json.NewEncoder(cmd.OutOrStdout())
		enc.SetIndent("", "  ")
		return enc.Encode(cfg)
	}
	return fmt.Errorf("--output %q: want yaml or json", c.output)
}

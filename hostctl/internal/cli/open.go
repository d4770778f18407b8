package cli

import (
	"github.com/spf13/cobra"

	labsite "github.com/meshvm/meshvm/lab/site"
	labvm "github.com/meshvm/meshvm/lab/vm"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/statedir"
)

// open loads the config and the fleet on the site it names, starting
// nothing. The lab comes from here: fleet does not link it.
func (g *globals) open(cmd *cobra.Command) (*fleet.Fleet, error) {
	cfg, err := g.load(cmd)
	if err != nil {
		return nil, err
	}
	if err := labPossible(cfg, labvm.Unsupported()); err != nil {
		return nil, err
	}
	state, err := statedir.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	return fleet.Open(cmd.Context(), cfg, state, agentBinary(cfg.Agent.Dir), sayer(cmd.ErrOrStderr(), "multipass: "), labsite.Lab)
}

// labPossible refuses a config asking for the lab (cluster or machines)
// where it cannot run, before anything is built or booted: unsupported is
// labvm.Unsupported(), why not on this OS.
func labPossible(cfg config.Config, unsupported error) error {
	if unsupported != nil && (cfg.Cluster.Provider == config.Lab || cfg.MachineProvider() == config.Lab) {
		return usageError{unsupported}
	}
	return nil
}

package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

type downCmd struct {
	g           *globals
	provider    string
	keepCluster bool
}

func (c *downCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove the VMs and the cluster up created",
		Args:  cobra.NoArgs,
		RunE:  c.run,
	}
	cmd.Flags().StringVar(&c.provider, "provider", "", "override cluster.provider (lab|multipass|ssh|kubeconfig)")
	cmd.Flags().BoolVar(&c.keepCluster, "keep-cluster", false, "remove the VMs but keep the cluster")
	return cmd
}

func (c *downCmd) run(cmd *cobra.Command, _ []string) error {
	cfg, state, s, err := c.g.open(cmd, c.provider)
	if err != nil {
		return err
	}
	var errs []error
	for _, vm := range cfg.VMs {
		if err := s.machines().Delete(cmd.Context(), vm.Name); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", vm.Name, err))
			continue
		}
		// Its certificate and workload files belonged to that machine and cluster.
		if err := os.RemoveAll(state.Path("vms", vm.Name)); err != nil {
			errs = append(errs, err)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "down: VM %s deleted\n", vm.Name)
	}
	if !c.keepCluster {
		if err := s.downCluster(cmd.Context(), newProgress(cmd.ErrOrStderr(), "cluster"), len(errs) == 0); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

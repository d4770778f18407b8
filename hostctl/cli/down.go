package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/labmachine"
	"github.com/meshvm/meshvm/pkg/labstack"
	"github.com/meshvm/meshvm/pkg/statedir"
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
	cfg, err := c.g.loadLab(cmd, c.provider)
	if err != nil {
		return err
	}
	state, err := statedir.Open(cfg.StateDir)
	if err != nil {
		return err
	}
	lab := labmachine.New(slog.New(slog.NewTextHandler(io.Discard, nil)), state.Path("lab", "vms"), cacheDir())
	var errs []error
	for _, vm := range cfg.VMs {
		if err := lab.Delete(cmd.Context(), vm.Name); err != nil {
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
		if err := labstack.Down(cmd.Context(), state.Path("lab"), true); err != nil {
			errs = append(errs, err)
		} else {
			fmt.Fprintln(cmd.ErrOrStderr(), "down: lab control plane stopped and its state removed")
		}
	}
	return errors.Join(errs...)
}

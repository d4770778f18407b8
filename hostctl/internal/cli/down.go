package cli

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/progress"
)

type downCmd struct {
	g           *globals
	keepCluster bool
}

func (c *downCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove the VMs and the cluster up created",
		Args:  cobra.NoArgs,
		RunE:  c.run,
	}
	cmd.Flags().BoolVar(&c.keepCluster, "keep-cluster", false, "remove the VMs but keep the cluster")
	return cmd
}

func (c *downCmd) run(cmd *cobra.Command, _ []string) (err error) {
	f, err := c.g.open(cmd)
	if err != nil {
		return err
	}
	var held error
	if f.Config.FleetMode() {
		// While the controller runs: their finalizers take the VMs out of
		// the mesh. MeshVMs it does not finalize are said, and the machines
		// go anyway.
		held = downFleet(cmd.Context(), f, sayer(cmd.ErrOrStderr(), "down: "))
	}
	err = f.RemoveVMs(cmd.Context(), sayer(cmd.ErrOrStderr(), "down: "))
	defer func() { err = errors.Join(held, err) }()
	if !c.keepCluster {
		if derr := f.Site.DownCluster(cmd.Context(), newProgress(cmd.ErrOrStderr(), progress.Cluster).Reporter(), err == nil); derr != nil {
			err = errors.Join(err, derr)
		}
	}
	if err == nil && !c.keepCluster {
		// The site is gone: the next command without flags takes the defaults.
		err = c.g.forget(cmd)
	}
	return err
}

package cli

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/fleetmode"
)

// fleetCommand is `hostctl fleet ...`: fleet mode, where the cluster keeps
// the VMs' state and a controller keeps them in the mesh.
func fleetCommand(g *globals) *cobra.Command {
	fl := &cobra.Command{Use: "fleet", Short: "Fleet mode: VMs declared in the cluster (MeshVMs) and kept in the mesh by a controller"}
	a := &fleetAdoptCmd{vmCmd: vmCmd{g: g}}
	fl.AddCommand(outputFlag(a.flags(&cobra.Command{Use: "adopt",
		Short: "Carry this state directory's VMs into the cluster once: the agent CA, each VM's records and a MeshVM per VM (the VMs keep running, nothing is reinstalled)",
		Args:  cobra.NoArgs, RunE: a.run}, 2*time.Minute), &a.format, "table", "json", "yaml"))
	return fl
}

type fleetAdoptCmd struct {
	vmCmd
	format string
}

func (c *fleetAdoptCmd) run(cmd *cobra.Command, _ []string) error {
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	a, err := fleetmode.FromFleet(ctx, f)
	if err != nil {
		return err
	}
	changes, err := fleetmode.Adopt(ctx, a)
	if rerr := render(cmd.OutOrStdout(), c.format, changes, []string{"OBJECT", "ACTION"}, func(ch fleetmode.Change) []string {
		return []string{ch.Object, ch.Action}
	}); err == nil {
		err = rerr
	}
	return err
}

package cli

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/fleetmode"
	"github.com/meshvm/meshvm/pkg/host/progress"
)

// fleetCommand is `hostctl fleet ...`: fleet mode, where the cluster keeps
// the VMs' state (MeshVMs, Secrets) and a controller keeps them in the mesh.
func fleetCommand(g *globals) *cobra.Command {
	fl := &cobra.Command{Use: "fleet", Short: "Fleet mode: VMs declared in the cluster (MeshVMs) and kept in the mesh by a controller"}
	a := &fleetCmd{vmCmd: vmCmd{g: g}}
	adopt := outputFlag(a.flags(&cobra.Command{Use: "adopt",
		Short: "Carry this state directory's VMs into the cluster once: the agent CA, each VM's records and a MeshVM per VM (the VMs keep running, nothing is reinstalled); on the lab, start the controller and wait for the VMs to be Ready",
		Args:  cobra.NoArgs, RunE: a.adopt}, 5*time.Minute), &a.format, "table", "json", "yaml")
	adopt.Flags().BoolVar(&a.wait, "wait", false, "wait for every adopted VM's MeshVM to be Ready (always on the lab, whose controller adopt starts)")
	s := &fleetCmd{vmCmd: vmCmd{g: g}}
	status := outputFlag(s.flags(&cobra.Command{Use: "status", Short: "Show the MeshVMs as the controller reports them (kubectl get meshvms)",
		Args: cobra.NoArgs, RunE: s.status}, 30*time.Second), &s.format, "table", "json", "yaml")
	fl.AddCommand(adopt, status)
	return fl
}

type fleetCmd struct {
	vmCmd
	format string
	wait   bool
}

func (c *fleetCmd) adopt(cmd *cobra.Command, _ []string) error {
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
		return []string{ch.Object, string(ch.Action)}
	}); err == nil {
		err = rerr
	}
	if err != nil {
		return err
	}
	p := newProgress(cmd.ErrOrStderr(), progress.Controller).Reporter()
	if !f.Config.FleetMode() {
		p.Say("fleet.enabled is false: set it to true (or MESHVM_FLEET=true) so that up and the vm commands act through the MeshVMs; until then they refuse the adopted VMs")
	}
	started, err := fleetmode.StartController(ctx, f, lineWriter{p})
	if err != nil {
		return err
	}
	if !started && !c.wait {
		return nil
	}
	dc, err := fleetmode.Dynamic(f)
	if err != nil {
		return err
	}
	var names []string
	for _, vm := range a.VMs {
		names = append(names, vm.Name)
	}
	return fleetmode.WaitReady(ctx, dc, a.Workload.Namespace, names, func(vm, format string, args ...any) { p.Step(progress.Controller, vm, format, args...) })
}

func (c *fleetCmd) status(cmd *cobra.Command, _ []string) error {
	f, err := c.open(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	dc, err := fleetmode.Dynamic(f)
	if err != nil {
		return err
	}
	rows, err := fleetmode.List(ctx, dc, f.Config.Workload.Namespace)
	if err != nil {
		return err
	}
	return render(cmd.OutOrStdout(), c.format, rows, []string{"NAME", "READY", "AGENT", "SIDECAR", "HEALTHY", "TOKEN EXPIRES", "REVISION", "ADDRESS", "AGE", "REASON"},
		func(r fleetmode.Row) []string {
			expires := ""
			if r.TokenExpires != nil {
				expires = r.TokenExpires.Local().Format(time.DateTime)
			}
			return []string{r.Name, r.Ready, r.Agent, r.Sidecar, r.Healthy, expires, r.Revision, r.Address, time.Since(r.Created).Round(time.Second).String(), r.Reason}
		})
}

// lineWriter turns a lab step's output into progress lines.
type lineWriter struct{ p progress.Reporter }

func (w lineWriter) Write(b []byte) (int, error) {
	w.p.Step(progress.Controller, "", "%s", strings.TrimSpace(string(b)))
	return len(b), nil
}

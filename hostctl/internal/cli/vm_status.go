package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/fleetmode"
)

type vmStatusCmd struct {
	g      *globals
	output string
}

func (c *vmStatusCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [VM...]",
		Short: "Show each VM's WorkloadEntry, agent, sidecar, credentials, DNS and app in one view",
		RunE:  c.run,
	}
	cmd.ValidArgsFunction = c.g.completeVMs(0)
	return outputFlag(cmd, &c.output, "table", "json", "yaml")
}

func (c *vmStatusCmd) run(cmd *cobra.Command, args []string) error {
	f, err := c.g.open(cmd)
	if err != nil {
		return err
	}
	vms := f.Config.VMs
	if len(args) > 0 {
		if vms, err = pick(f.Config, args); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
	defer cancel()
	statuses := f.Statuses
	if f.Config.FleetMode() {
		statuses = func(ctx context.Context, vms []config.VM, p fleet.Reporter) ([]fleet.VMStatus, error) {
			return fleetmode.Statuses(ctx, f, vms, p)
		}
	}
	out, err := statuses(ctx, vms, sayer(cmd.ErrOrStderr(), "vm status: "))
	if err != nil {
		return err
	}
	for i := range out {
		out[i].Next = advise(out[i].Next, out[i].Cause)
	}
	if err := renderStatus(cmd.OutOrStdout(), c.output, out); err != nil {
		return err
	}
	var bad []string
	for _, s := range out {
		if !s.OK {
			bad = append(bad, fmt.Sprintf("%s: %s", s.Name, s.Next))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("not healthy:\n%s", strings.Join(bad, "\n"))
	}
	return nil
}

func renderStatus(w io.Writer, output string, vms []fleet.VMStatus) error {
	head := []string{"VM", "ADDRESS", "MACHINE", "REVISION", "WORKLOADENTRY", "HEALTHY", "AGENT", "SIDECAR", "CERT", "TOKEN", "CREDENTIALS", "ISTIOD DNS", "APP", "CAPTURE"}
	fleetMode := len(vms) > 0 && vms[0].MeshVM != nil
	if fleetMode {
		// Fleet mode: the MeshVM's Ready (the controller's verdict) first.
		head = append([]string{"VM", "READY"}, head[1:]...)
	}
	return render(w, output, vms, head,
		func(s fleet.VMStatus) []string {
			healthy := orDash(s.Healthy)
			if s.Disconnected != "" {
				healthy += " (stale)"
			}
			row := []string{s.Name, orDash(s.Address), s.Machine, s.Revision, orDash(s.WorkloadEntry), healthy, s.Agent,
				orDash(s.Sidecar), orDash(s.CertExpiry), orDash(s.TokenExpiry), orDash(string(s.Credentials)), orDash(s.IstiodDNS), orDash(s.App), orDash(s.CaptureSummary())}
			if fleetMode {
				row = append([]string{s.Name, meshVMReady(s.MeshVM)}, row[1:]...)
			}
			return row
		})
}

// meshVMReady is the READY column of a VM's MeshVM.
func meshVMReady(d *fleet.Declared) string {
	switch {
	case d == nil:
		return "no MeshVM"
	case d.Deleting:
		return "deleting"
	case d.Paused:
		return "paused"
	case d.Ready == "True":
		return "True"
	}
	return d.Ready + " (" + d.Reason + ")"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

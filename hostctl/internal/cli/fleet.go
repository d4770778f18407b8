package cli

import (
	"context"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"

	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/fleetmode"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
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
	a, err := adoption(ctx, f)
	if err != nil {
		return err
	}
	changes, err := fleetmode.Adopt(ctx, a)
	if rerr := render(cmd.OutOrStdout(), c.format, changes, []string{"OBJECT", "ACTION"}, func(ch workload.Change) []string {
		return []string{ch.Object, ch.Action}
	}); err == nil {
		err = rerr
	}
	return err
}

// adoption is what fleet adopt carries into the fleet's cluster: the
// site's facts become the fleet settings, each VM a MeshVM.
func adoption(ctx context.Context, f *fleet.Fleet) (fleetmode.Adoption, error) {
	cfg, site := f.Config, f.Site
	rc, err := fleet.RestConfig(site.Kubeconfig())
	if err != nil {
		return fleetmode.Adoption{}, err
	}
	clients, err := fleet.KubeClients(site.Kubeconfig())
	if err != nil {
		return fleetmode.Adoption{}, err
	}
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fleetmode.Adoption{}, err
	}
	settings := fleetstore.Settings{ClusterID: site.ClusterID(ctx), IstioNamespace: istioinstall.Namespace, ImageHub: fleet.IstioOptions(cfg).ImageHub(),
		IstiodVersions: map[string]string{}}
	lab := cfg.Cluster.Provider == config.Lab
	if !lab {
		if settings.IstiodAddress, err = site.IstiodAddress(ctx, ""); err != nil {
			return fleetmode.Adoption{}, err
		}
	}
	// The versions of the revisions the VMs are on and new VMs join: the
	// lab's istiods are processes the controller cannot ask.
	store := vmcore.DirStore{Dir: f.State}
	revs := []string{site.Revision(ctx)}
	var vms []fleetmode.VM
	for _, vm := range cfg.VMs {
		d := fleetmode.VM{Name: vm.Name, RunsApp: cfg.RunsApp(vm)}
		if lab {
			if d.IstiodAddress, err = site.IstiodAddress(ctx, vm.Name); err != nil {
				return fleetmode.Adoption{}, err
			}
		}
		if j, ok, _ := store.Joined(vm.Name); ok {
			revs = append(revs, j.Revision)
		}
		vms = append(vms, d)
	}
	for _, rev := range revs {
		if v, _, err := site.IstiodVersion(ctx, rev); err == nil {
			settings.IstiodVersions[workloadfiles.RevisionName(rev)] = v
		}
	}
	return fleetmode.Adoption{Clients: clients, Dynamic: dc, Namespace: fleetstore.DefaultNamespace, State: f.State, Workload: fleet.WorkloadSpec(cfg),
		VMs: vms, TokenLifetime: cfg.Workload.TokenLifetime.Duration, CertificateLifetime: cfg.Workload.CertificateLifetime.Duration, Settings: settings}, nil
}
